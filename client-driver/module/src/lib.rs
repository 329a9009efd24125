//! The NPI client module, portable: `#![no_std]` + `alloc`, generic over
//! [`nmr_common::nmr::Nmr`]. The driver image (`nmr_client.sys`, the
//! `nmr-client` package) runs it on the real NMR; the testbed runs it on
//! the model.

#![no_std]

extern crate alloc;

pub mod client;
