//! OTLP protobuf bodies (first byte: traces or logs) through the receiver's decoded-size
//! estimate, decoding and id checks, then the whole processing chain up to the binary `COPY` rows.
//! Every request that decodes (valid OTLP) is also written as OTLP/JSON by the reference
//! encoder and must decode through the JSON path to the same request: a refusal of that
//! valid input fails like a crash (`tally_fuzz::reference_json`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_fuzz::CHAIN;

fuzz_target!(|data: &[u8]| {
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    if kind & 1 == 0 {
        if let Ok(request) = tally_receiver::fuzzing::traces(body, false) {
            tally_fuzz::reference_json::check_traces(&request);
            CHAIN.traces(request);
        }
    } else if let Ok(request) = tally_receiver::fuzzing::logs(body, false) {
        tally_fuzz::reference_json::check_logs(&request);
        CHAIN.logs(request);
    }
});
