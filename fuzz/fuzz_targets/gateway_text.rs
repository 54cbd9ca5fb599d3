//! The gateway's direct path, which sends a client's `tools/call` upstream as text
//! and an upstream's answer back as text: any body as a call, any message as an
//! answer and as an SSE event, each checked against what a parser reads in the same
//! bytes (the checks are `gatehouse::fuzzing`'s, which the property tests run too).
//!
//! The input is the call, the answer and the client's id, apart by a byte 0xFF (never
//! in UTF-8, so never in JSON): the seeds in `fuzz/seeds/gateway_text` are messages
//! as written, and libFuzzer's dictionary (`fuzz/dicts/gateway_text.dict`) holds the
//! names the direct path reads.
#![no_main]

use gatehouse::fuzzing::{check_direct_answer, check_direct_call, check_sse_frame};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0xff);
    let call = parts.next().unwrap_or_default();
    let answer = parts.next().unwrap_or_default();
    // The client's id as it wrote it: a string or an integer.
    let client_id = match serde_json::from_slice::<Value>(parts.next().unwrap_or_default()) {
        Ok(id) if id.is_string() || id.is_i64() || id.is_u64() => id,
        _ => Value::from(1),
    };
    check_direct_call(call);
    check_direct_answer(answer, &client_id);
    check_sse_frame(answer);
});
