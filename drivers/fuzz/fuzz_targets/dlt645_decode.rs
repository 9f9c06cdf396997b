//! Feeds arbitrary bytes to the DL/T 645 frame decoder the way the client does: decode,
//! drop what it says, repeat. It must never panic, never stall, and every frame it returns
//! must encode back to bytes that decode to the same frame.
#![no_main]

use gridgate_drivers::dlt645::frame::{Decoded, decode, encode};
use gridgate_drivers::dlt645::di::{DataId, decode_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    while pos < data.len() {
        match decode(&data[pos..]) {
            Decoded::Frame { frame, consumed } => {
                assert!(consumed > 0);
                pos += consumed;
                let wire = encode(&frame, 0).expect("a decoded frame fits");
                assert_eq!(decode(&wire), Decoded::Frame { frame: frame.clone(), consumed: wire.len() });
                if let Some(di) = DataId::from_wire(&frame.data) {
                    let _ = decode_value(di, &frame.data[4..]);
                }
            }
            Decoded::Skip { consumed, .. } => {
                assert!(consumed > 0);
                pos += consumed;
            }
            Decoded::NeedMore => break,
        }
    }
});
