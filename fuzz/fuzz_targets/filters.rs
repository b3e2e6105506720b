//! The admin API's query-string decoding, filter parsers (`/activity`, `/tokens`, the
//! shared parameter checks), keyset cursor and `seq` parsers on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tally_admin_api::fuzzing::parse_query(&String::from_utf8_lossy(data));
});
