//! `caiman-online`: CaImAn's OnACID — streaming source extraction, one frame at a time.
//!
//! Being written; see issue 8.
