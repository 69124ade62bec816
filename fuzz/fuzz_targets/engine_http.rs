//! The engine client's response head parser: never panics; a head it reads is read the same
//! from exactly its own bytes, and takes no more bytes than it was given; the error of a
//! non-2xx answer is built from any body.
#![no_main]

use container_logd::internals::http::{parse_head, status_error};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, used))) = parse_head(data) {
        assert!(used <= data.len());
        match parse_head(&data[..used]) {
            Ok(Some((again, n))) => assert!(again == head && n == used),
            other => panic!("its own {used} bytes read as {other:?}"),
        }
        let _ = head.header("content-type");
        let _ = head.api_version();
        let _ = status_error(head.status, &data[used..]);
    }
});
