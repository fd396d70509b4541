mod e2e;
mod e2e_stream;
pub mod test_util;
