//! The API's query parser: never panics; a filter it accepts has a limit in range and a since
//! not after its until; percent-decoding leaves text without `%` and `+` as it is.
#![no_main]

use container_logd::internals::api::query::{percent_decode, split_url, Filter, MAX_LIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    if !url.contains(['%', '+']) {
        assert_eq!(percent_decode(url).as_deref(), Some(url));
    }
    let Ok((_path, pairs)) = split_url(url) else {
        return;
    };
    if let Ok(f) = Filter::parse(&pairs, &["follow"]) {
        assert!((1..=MAX_LIMIT).contains(&f.limit));
        if let (Some(s), Some(u)) = (f.since_ms, f.until_ms) {
            assert!(s <= u);
        }
    }
});
