//! Firmware for a cluster of boards (issue 7): not built yet.
#![no_std]
