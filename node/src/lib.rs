pub mod storage;
pub mod transport;
