//! The Windows kernel shell shared by both drivers (placeholder, filled below).
#![no_std]
