//! The API's request head parser: never panics; a head it reads is read the same from exactly
//! its own bytes, and takes no more bytes than it was given.
#![no_main]

use container_logd::internals::api::http::parse_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, used))) = parse_head(data) {
        assert!(used <= data.len());
        match parse_head(&data[..used]) {
            Ok(Some((again, n))) => assert!(again == req && n == used),
            other => panic!("its own {used} bytes read as {other:?}"),
        }
        let _ = req.keep_alive();
        let _ = req.is_head();
    }
});
