//! User databases. One file per format; passwd-file is the first.

pub mod passwd_file;
pub mod scheme;
