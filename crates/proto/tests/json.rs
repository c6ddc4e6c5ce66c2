//! The HTTP APIs speak the proto3 JSON mapping of `rumor.api.v1`: these
//! tests pin the parts of it that clients see.

use proto::api::{KeyOperation, Member, MemberStatus, ReplyLine, SendRequest};

#[test]
fn enums_travel_by_name_and_every_field_appears() {
    let mut m = Member {
        name: "worker-1".into(),
        incarnation: 7,
        ..Default::default()
    };
    m.set_status(MemberStatus::Suspect);
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["status"], "MEMBER_STATUS_SUSPECT");
    // 64-bit integers are strings, so JavaScript clients lose no precision.
    assert_eq!(json["incarnation"], "7");
    // Fields at their default values appear too, so readers see the whole shape.
    assert_eq!(json["capacity"], 0, "{json}");
    assert_eq!(json["roles"], serde_json::json!([]), "{json}");
    let back: Member = serde_json::from_value(json).unwrap();
    assert_eq!(back, m);
}

#[test]
fn requests_accept_numbers_or_strings_for_64_bit_fields_and_ignore_unknown_fields() {
    let a: SendRequest = serde_json::from_str(r#"{"key":"k","payload":"hi","timeout_ms":250,"future":1}"#).unwrap();
    let b: SendRequest = serde_json::from_str(r#"{"key":"k","payload":"hi","timeout_ms":"250"}"#).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.timeout_ms, Some(250));
    assert_eq!(a.id, None);
    let bad = serde_json::from_str::<SendRequest>(r#"{"key":7}"#).unwrap_err();
    assert!(bad.to_string().contains("string"), "{bad}");
}

#[test]
fn a_reply_line_without_an_error_has_no_error_field() {
    let line = ReplyLine {
        id: "01J".into(),
        seq: 1,
        data: "hi".into(),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&line).unwrap(),
        r#"{"id":"01J","seq":"1","worker":"","data":"hi","last":false,"replayed":false}"#
    );
}

#[test]
fn key_operations_have_short_names_for_paths() {
    for op in [KeyOperation::Install, KeyOperation::Use, KeyOperation::Remove] {
        assert_eq!(KeyOperation::from_short_name(op.short_name()), Some(op));
    }
    assert_eq!(KeyOperation::from_short_name("rotate"), None);
}
