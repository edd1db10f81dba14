//! Shared types.
#![no_std]

pub mod maps;
