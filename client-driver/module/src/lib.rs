//! The NPI client module, portable: `no_std`, generic over
//! [`nmr_common::nmr::Nmr`], and written on the safe `nmr` API: it contains
//! no `unsafe` (`forbid(unsafe_code)`). The driver image (`nmr_client.sys`,
//! the `nmr-client` package) runs it on the real NMR; the testbed runs it on
//! the model.

#![no_std]
#![forbid(unsafe_code)]

pub mod client;
