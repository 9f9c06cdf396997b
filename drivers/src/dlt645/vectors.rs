//! Frames published by meter vendors and concentrator firmware (the team's
//! `shared/vectors/dlt645-2007.md`), byte for byte: our encoder must produce them and our
//! decoder must read them, so that we interoperate with meters we did not write.

use super::di::DataId;
use super::frame::{Address, Control, Decoded, Frame, decode, encode, func};
use super::{MeterTime, RemoteCommand, RemoteControl};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn decoded(wire: &[u8]) -> Frame {
    match decode(wire) {
        Decoded::Frame { frame, consumed } => {
            assert_eq!(consumed, wire.len());
            frame
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn read_address_request_and_reply() {
    let req = Frame {
        address: Address::WILDCARD,
        control: Control::request(func::READ_ADDRESS),
        data: vec![],
    };
    assert_eq!(
        encode(&req, 4).unwrap(),
        hex("FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16")
    );
    let reply = decoded(&hex(
        "68 00 36 19 00 00 00 68 93 06 33 69 4C 33 33 33 39 16",
    ));
    assert_eq!(reply.control, Control::reply(func::READ_ADDRESS, false));
    assert_eq!(reply.data, hex("00 36 19 00 00 00"));
    assert_eq!(
        Address(reply.data[..6].try_into().unwrap()).to_string(),
        "000000193600"
    );
    assert_eq!(reply.address.to_string(), "000000193600");
}

#[test]
fn read_data_requests_to_the_wildcard_address() {
    let energy = Frame {
        address: Address::WILDCARD,
        control: Control::request(func::READ_DATA),
        data: DataId(0x0001_0000).to_wire().to_vec(),
    };
    assert_eq!(
        encode(&energy, 4).unwrap(),
        hex("FE FE FE FE 68 AA AA AA AA AA AA 68 11 04 33 33 34 33 AE 16")
    );
    let power = Frame {
        data: DataId(0x0203_0000).to_wire().to_vec(),
        ..energy
    };
    assert_eq!(
        encode(&power, 0).unwrap(),
        hex("68 AA AA AA AA AA AA 68 11 04 33 33 36 35 B2 16")
    );
}

#[test]
fn broadcast_time_sync() {
    let t = MeterTime {
        year: 17,
        month: 6,
        day: 5,
        hour: 10,
        minute: 22,
        second: 51,
    };
    let f = Frame {
        address: Address::BROADCAST,
        control: Control::request(func::BROADCAST_TIME),
        data: t.to_bcd().to_vec(),
    };
    assert_eq!(
        encode(&f, 0).unwrap(),
        hex("68 99 99 99 99 99 99 68 08 06 84 55 43 38 39 4A 4B 16")
    );
}

#[test]
fn remote_control_trip_and_its_acknowledgement() {
    let rc = RemoteControl {
        password: [0; 4],
        operator: [0; 4],
        command: RemoteCommand::Trip,
        valid_until: MeterTime {
            year: 18,
            month: 5,
            day: 12,
            hour: 15,
            minute: 41,
            second: 24,
        },
    };
    let f = Frame {
        address: Address::parse("111111111111").unwrap(),
        control: Control::request(func::REMOTE_CONTROL),
        data: rc.to_data(),
    };
    let wire =
        hex("68 11 11 11 11 11 11 68 1C 10 33 33 33 33 33 33 33 33 4D 33 57 74 48 45 38 4B 55 16");
    assert_eq!(encode(&f, 0).unwrap(), wire);
    assert_eq!(RemoteControl::from_data(&decoded(&wire).data), Some(rc));
    let ack = decoded(&hex("68 11 11 11 11 11 11 68 9C 00 D2 16"));
    assert_eq!(ack.control, Control::reply(func::REMOTE_CONTROL, false));
    assert!(ack.data.is_empty());
}
