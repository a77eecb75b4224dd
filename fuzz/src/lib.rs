//! Shared code for turnd's fuzz targets.

pub mod server_driver;
