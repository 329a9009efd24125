//! The NPI provider module, portable: `no_std`, generic over
//! [`nmr_common::nmr::Nmr`], and written on the safe `nmr` API: it contains
//! no `unsafe` (`forbid(unsafe_code)`). The driver image (`nmr_provider.sys`,
//! the `nmr-provider` package) runs it on the real NMR; the testbed runs it on
//! the model.

#![no_std]
#![forbid(unsafe_code)]

pub mod provider;
