pub mod core_harness;
