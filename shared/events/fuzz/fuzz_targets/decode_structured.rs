//! Arbitrary bytes as a structured-mode body (`Content-Type:
//! application/cloudevents+json`): no panic, a typed error or an event that
//! survives re-encoding in both modes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    events_fuzz::decode_and_check(&events_fuzz::structured_message(body));
});
