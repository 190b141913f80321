#![no_std]
// This library target exists so that ttm-userspace can name this crate as a
// build dependency; the programs are the `ttm` binary target.
