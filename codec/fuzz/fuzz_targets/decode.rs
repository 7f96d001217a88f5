//! Arbitrary bytes into a decoder without a session, on both sides, fed whole and in
//! reads of fuzzer-chosen sizes. The decoder must never panic, must decide the same way
//! however the bytes are split, and every frame it accepts must re-encode to a frame of
//! the same length that decodes to the same message.
#![no_main]

use bytes::BytesMut;
use cardgate_codec::codec::{Frame, encode_frame};
use cardgate_codec::{Side, TerminalCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// What decoding a stream gave: each frame with the bytes it consumed, how it ended (the
/// error's code, if any) and the bytes left over.
type Outcome = (Vec<(Frame, usize)>, Option<u16>, usize);

fn run(data: &[u8], sizes: &[usize], side: Side) -> Outcome {
    let mut codec = TerminalCodec::new(side);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    for size in sizes.iter().cycle() {
        if fed >= data.len() {
            break;
        }
        let end = (fed + size).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push((f, before - buf.len())),
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                    break;
                }
                Err(e) => return (frames, Some(e.error_code().code()), buf.len()),
            }
        }
    }
    (frames, None, buf.len())
}

fuzz_target!(|input: &[u8]| {
    let Some((&seed, data)) = input.split_first() else {
        return;
    };
    let sizes = [1 + usize::from(seed & 0x0f), 1 + 7 * usize::from(seed >> 4)];
    for side in [Side::Gateway, Side::Terminal] {
        let whole = run(data, &[data.len().max(1)], side);
        let split = run(data, &sizes, side);
        // Where the reads split must not matter, except for how much of an unfinished
        // stream is still buffered when an error stops it.
        assert_eq!(whole.0, split.0);
        assert_eq!(whole.1, split.1);
        if whole.1.is_none() {
            assert_eq!(whole.2, split.2);
        }
        for (frame, consumed) in &whole.0 {
            let mut again = BytesMut::new();
            encode_frame(None, 0, frame.request_id, &frame.message, &mut again);
            assert_eq!(again.len(), *consumed);
            let back = TerminalCodec::new(side)
                .decode(&mut again)
                .expect("a re-encoded frame decodes")
                .expect("and is complete");
            assert_eq!(back.message, frame.message);
            assert_eq!(back.request_id, frame.request_id);
        }
    }
});
