//! The terminal's desktops as qcow2 chains in `<data_dir>/disks`.

pub mod catalog;
pub mod inventory;
pub mod name;
pub mod qcow2;
pub mod qemu_img;
pub mod store;

pub use catalog::{Catalog, LayerMeta};
pub use inventory::{Chain, Inventory, Problem};
pub use name::LayerName;
pub use store::{DiskError, DiskStore};
