use std::sync::Arc;

use super::*;

fn schema(paths: &[&str]) -> (Scanner, Vec<FieldId>) {
    let mut b = SchemaBuilder::new();
    let ids = paths.iter().map(|p| b.field(p)).collect();
    (Scanner::new(Arc::new(b.build().unwrap())), ids)
}

const PATHS: [&str; 6] = [
    "destination.geo.country_name",
    "destination.ip",
    "event.category",
    "source.bytes",
    "process.name",
    "a.very.long.segment_name_over_sixteen_bytes.x",
];

#[test]
fn nested_dotted_and_mixed_shapes_read_the_same() {
    let (mut s, f) = schema(&PATHS);
    for line in [
        r#"{"destination":{"geo":{"country_name":"Chile"},"ip":"1.2.3.4"},"source":{"bytes":12}}"#,
        r#"{"destination.geo.country_name":"Chile","destination.ip":"1.2.3.4","source.bytes":"12"}"#,
        r#"{"destination":{"geo.country_name":"Chile","ip":"1.2.3.4"},"source.bytes":12.0}"#,
        r#"{"destination.geo":{"country_name":"Chile"},"destin\u0061tion":{"ip":"1.2.3.4"},"source\u002ebytes":1.2e1}"#,
    ] {
        let e = s.scan(line).unwrap();
        assert_eq!(e.str(f[0]), Some("Chile"), "{line}");
        assert_eq!(e.str(f[1]), Some("1.2.3.4"), "{line}");
        assert_eq!(e.ip(f[1]), "1.2.3.4".parse().ok(), "{line}");
        assert_eq!(e.number(f[3]), Some(12.0), "{line}");
        assert!(!e.present(f[4]), "{line}");
    }
}

#[test]
fn long_keys_and_keys_near_the_end_of_the_line() {
    let (mut s, f) = schema(&PATHS);
    let e = s
        .scan(r#"{"a":{"very":{"long":{"segment_name_over_sixteen_bytes":{"x":5}}}}}"#)
        .unwrap();
    assert_eq!(e.number(f[5]), Some(5.0));
    let e = s
        .scan(r#"{"a.very.long.segment_name_over_sixteen_bytez.x":5}"#)
        .unwrap();
    assert!(!e.present(f[5]));
    let (mut s, f) = schema(&["k", "kk"]);
    let e = s.scan(r#"{"kk":1,"k":2}"#).unwrap();
    assert_eq!((e.number(f[0]), e.number(f[1])), (Some(2.0), Some(1.0)));
    // Keys with the same two words and different lengths, told apart by the length alone:
    // overlapping words of a 9 to 16 byte key, and a short key's zero padding spelled out (its
    // word holds the key last byte first, so the padding stands before the key).
    let (mut s, f) = schema(&["aaaaaaaaaa", "aaaaaaaaaaa"]);
    let e = s.scan(r#"{"aaaaaaaaaaa":1,"aaaaaaaaaa":2}"#).unwrap();
    assert_eq!((e.number(f[0]), e.number(f[1])), (Some(2.0), Some(1.0)));
    let (mut s, f) = schema(&["k"]);
    let e = s.scan(r#"{"\u0000k":1,"\u0000\u0000k":2}"#).unwrap();
    assert!(!e.present(f[0]));
}

/// Keys over sixteen bytes with the same two words and length (they differ only in bytes that
/// neither word covers) share a probe chain: each is found past the other, at the top and
/// below, and a third such key that is in neither entry is not matched.
#[test]
fn long_keys_differing_only_between_their_words_are_each_found() {
    let (mut s, f) = schema(&[
        "http_request_2xx_count",
        "http_request_5xx_count",
        "labels.http_request_2xx_count",
        "labels.http_request_5xx_count",
    ]);
    for line in [
        r#"{"http_request_2xx_count":1,"http_request_5xx_count":2,"labels":{"http_request_2xx_count":3,"http_request_5xx_count":4}}"#,
        r#"{"http_request_5xx_count":2,"labels.http_request_5xx_count":4,"http_request_2xx_count":1,"labels.http_request_2xx_count":3}"#,
    ] {
        let e = s.scan(line).unwrap();
        let read: Vec<_> = f.iter().map(|&id| e.number(id)).collect();
        assert_eq!(read, [Some(1.0), Some(2.0), Some(3.0), Some(4.0)], "{line}");
    }
    for line in [
        r#"{"http_request_5xx_count":2,"labels":{"http_request_5xx_count":4}}"#,
        r#"{"http_request_2xx_count":1,"labels":{"http_request_2xx_count":3}}"#,
        r#"{"http_request_4xx_count":0,"labels":{"http_request_4xx_count":0}}"#,
    ] {
        let e = s.scan(line).unwrap();
        for (&id, path) in f.iter().zip(["2xx", "5xx", "2xx", "5xx"]) {
            assert_eq!(e.present(id), line.contains(path), "{path} in {line}");
        }
    }
}

/// Three wanted keys over sixteen bytes with the same words and length in one table: each is
/// found whichever entry its probe meets first, also when the line spells it with an escape
/// (decoded keys take the same path), and a fourth with those words is matched by none
/// (review-final11a M1: with two keys only the second reached the full comparison).
#[test]
fn three_long_keys_with_the_same_words_are_each_found_plainly_and_escaped() {
    let keys = [
        "http_request_2xx_count",
        "http_request_4xx_count",
        "http_request_5xx_count",
    ];
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
        let wanted: Vec<&str> = order.iter().map(|&i| keys[i]).collect();
        let (mut s, f) = schema(&wanted);
        let plain =
            r#"{"http_request_5xx_count":5,"http_request_2xx_count":2,"http_request_4xx_count":4}"#;
        let escaped = r#"{"http_request_\u0035xx_count":5,"http_request_2x\u0078_count":2,"http_request_4xx_coun\u0074":4}"#;
        for line in [plain, escaped] {
            let e = s.scan(line).unwrap();
            for (&id, key) in f.iter().zip(&wanted) {
                let want = f64::from(key.as_bytes()[13] - b'0');
                assert_eq!(e.number(id), Some(want), "{key} in {line}");
            }
        }
        let e = s.scan(r#"{"http_request_3xx_count":3}"#).unwrap();
        assert!(f.iter().all(|&id| !e.present(id)), "{wanted:?}");
    }
}

/// Every key length from 1 to 20 bytes: a wanted key is found, and a key of the same length
/// that differs from it only in its last byte (or only in its first) is not, wherever it sits
/// in the line. A key's second word (its last eight bytes, from nine bytes on) is all that
/// tells the last-byte variant apart from 9 to 16 bytes. White space before the first key
/// moves its end across the line's eighth byte, where a short key's word stops being padded
/// (`schema::key_words`) and is read from the line.
#[test]
fn keys_that_differ_only_at_one_end_are_told_apart_at_every_length() {
    for len in 1..=20 {
        let key: String = (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let last = format!("{}Z", &key[..len - 1]);
        let first = format!("Z{}", &key[1..]);
        let (mut s, f) = schema(&[key.as_str()]);
        for ws in (0..=8).map(|n| " ".repeat(n)) {
            for other in [&last, &first] {
                for line in [
                    format!(r#"{{{ws}"{other}":1}}"#),
                    format!(r#"{{{ws}"{other}":1,"padding_after_the_key":"0123456789"}}"#),
                ] {
                    let e = s.scan(&line).unwrap();
                    assert!(!e.present(f[0]), "{key} matched in {line}");
                }
            }
            let alone = format!(r#"{{{ws}"{key}":3}}"#);
            let e = s.scan(&alone).unwrap();
            assert_eq!(e.number(f[0]), Some(3.0), "{alone}");
            let both = format!(r#"{{{ws}"{last}":1,"{key}":2}}"#);
            let e = s.scan(&both).unwrap();
            assert_eq!(e.number(f[0]), Some(2.0), "{both}");
        }
    }
}

/// Dotted keys under eight bytes as the only form of their field: a short key's word is read
/// from the line (or padded, when it ends in the line's first eight bytes), and whether it has
/// a dot is tested on that word (`schema::has_dot`). White space before the key moves its end
/// across byte eight; a key with the same bytes split at another dot leads nowhere.
#[test]
fn short_dotted_keys_are_paths_wherever_they_end() {
    let (mut s, f) = schema(&["a.b", "host.ip"]);
    for ws in (0..=8).map(|n| " ".repeat(n)) {
        for line in [
            format!(r#"{{{ws}"a.b":1,"host.ip":"1.2.3.4"}}"#),
            format!(r#"{{{ws}"host.ip":"1.2.3.4","a.b":1}}"#),
            format!(r#"{{{ws}"x":0,"a.b":1,"host.ip":"1.2.3.4"}}"#),
        ] {
            let e = s.scan(&line).unwrap();
            assert_eq!(e.number(f[0]), Some(1.0), "{line}");
            assert_eq!(e.ip(f[1]), "1.2.3.4".parse().ok(), "{line}");
        }
        for line in [
            format!(r#"{{{ws}"ab.":1,"hos.tip":"1.2.3.4"}}"#),
            format!(r#"{{{ws}"a":0,"ab.c":1,"a.bc":2,".a.b":3,"hostip":"1.2.3.4"}}"#),
        ] {
            let e = s.scan(&line).unwrap();
            assert!(!e.present(f[0]) && !e.present(f[1]), "{line}");
        }
    }
}

#[test]
fn arrays_escapes_nulls_and_unwanted_fields() {
    let (mut s, f) = schema(&PATHS);
    let line = r#"{"event":{"category":["network",3,{"a":[]},"w\u0065b"]},"x":{"y":[1,{"z":2}]},"process":{"name":"a\"b\u00e9\ud83d\ude00\ud800"},"destination":{"ip":null}}"#;
    let e = s.scan(line).unwrap();
    assert!(e.contains(f[2], "network"));
    assert!(e.contains(f[2], "web"));
    assert!(!e.contains(f[2], "process"));
    assert_eq!(e.str(f[4]), Some("a\"b\u{e9}\u{1F600}\u{FFFD}"));
    assert!(!e.present(f[1]));
    assert_eq!(e.ip(f[1]), None);
}

#[test]
fn the_most_nested_form_wins_whatever_the_order() {
    let (mut s, f) = schema(&PATHS);
    for line in [
        r#"{"destination.ip":"1.1.1.1","destination":{"ip":"2.2.2.2"}}"#,
        r#"{"destination":{"ip":"2.2.2.2"},"destination.ip":"1.1.1.1"}"#,
    ] {
        let mut e = s.scan(line).unwrap();
        assert_eq!(e.str(f[1]), Some("2.2.2.2"), "{line}");
        assert!(e.conflicting(), "{line}");
        e.set(f[0], "Peru");
        assert_eq!(e.str(f[0]), Some("Peru"));
    }
    // Every form of a three-segment path, most preferred first.
    let forms = [
        r#""destination":{"geo":{"country_name":"A"}}"#,
        r#""destination":{"geo.country_name":"B"}"#,
        r#""destination.geo":{"country_name":"C"}"#,
        r#""destination.geo.country_name":"D""#,
    ];
    for first in 0..forms.len() {
        let mut members: Vec<&str> = forms[first..].to_vec();
        members.reverse();
        let line = format!("{{{}}}", members.join(","));
        let e = s.scan(&line).unwrap();
        let expected = ["A", "B", "C", "D"][first];
        assert_eq!(e.str(f[0]), Some(expected), "{line}");
    }
    let e = s.scan(r#"{"destination":{"ip":"2.2.2.2"}}"#).unwrap();
    assert!(!e.conflicting());
}

#[test]
fn a_repeated_key_is_read_as_its_last_occurrence_with_all_below_it() {
    let (mut s, f) = schema(&PATHS);
    // The first `destination` object, country included, is replaced by the second.
    let line = r#"{"destination":{"ip":"8.8.8.8","geo":{"country_name":"United States"}},"destination":{"ip":"5.6.7.8"}}"#;
    let e = s.scan(line).unwrap();
    assert_eq!(e.str(f[1]), Some("5.6.7.8"));
    assert!(!e.present(f[0]));
    // A repeated leaf, and a repeated dotted key.
    let e = s.scan(r#"{"source":{"bytes":1,"bytes":2},"destination.ip":"1.1.1.1","destination.ip":"2.2.2.2"}"#).unwrap();
    assert_eq!(e.number(f[3]), Some(2.0));
    assert_eq!(e.str(f[1]), Some("2.2.2.2"));
    // A replaced nested form uncovers a dotted one that was there all along.
    let line = r#"{"destination.geo.country_name":"Chile","destination":{"geo":{"country_name":"Peru"}},"destination":{"ip":"1.1.1.1"}}"#;
    let e = s.scan(line).unwrap();
    assert_eq!(e.str(f[0]), Some("Chile"));
    // The same key escaped differently is the same key.
    let e = s
        .scan(r#"{"destination":{"ip":"1.1.1.1"},"destin\u0061tion":{"ip":"3.3.3.3"}}"#)
        .unwrap();
    assert_eq!(e.str(f[1]), Some("3.3.3.3"));
    // ... and replaces all below the plain one, which its escape alone did not reveal as a
    // repeat (found by the scanner_vs_serde fuzz target).
    let e = s
        .scan(r#"{"destination":{"geo":{"country_name":"Chile"}},"destin\u0061tion":{"ip":"3.3.3.3"}}"#)
        .unwrap();
    assert!(!e.present(f[0]));
    assert_eq!(e.str(f[1]), Some("3.3.3.3"));
    // Agrees with serde_json, which keeps the last value of a repeated key.
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["destination"]["ip"], "1.1.1.1");
    assert!(v["destination"].get("geo").is_none());
    // The escaped spelling first: only its marking every key of the object as matched shows
    // the plain key after it to be a repeat.
    let line =
        r#"{"destin\u0061tion":{"geo":{"country_name":"Chile"}},"destination":{"ip":"3.3.3.3"}}"#;
    let e = s.scan(line).unwrap();
    assert!(!e.present(f[0]));
    assert_eq!(e.str(f[1]), Some("3.3.3.3"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(v["destination"].get("geo").is_none());
}

/// The exact pass marks each replaced key at its first byte in the stop index, so that the
/// walk tests it for being replaced: wherever that byte falls (the padding moves it across
/// the blocks of 64), the replaced object is skipped and the keys around it are read; marks in
/// objects the walk does not open (an unwanted value, objects in an array, a replaced object)
/// change nothing there.
#[test]
fn replaced_keys_are_skipped_wherever_their_first_byte_falls_in_the_index() {
    let (mut s, f) = schema(&["a.b", "a.c", "k"]);
    for pad in 40..140 {
        let line = format!(
            r#"{{"p":"{}","a":{{"b":1,"x":{{"b":5,"b":6}}}},"k":"first","u":{{"k":1,"k":[{{"k":3,"k":4}}]}},"a":{{"c":2}},"k":"second"}}"#,
            "p".repeat(pad)
        );
        let e = s.scan(&line).unwrap();
        assert!(!e.present(f[0]), "{line}");
        assert_eq!(e.number(f[1]), Some(2.0), "{line}");
        assert_eq!(e.str(f[2]), Some("second"), "{line}");
        // The replaced key escaped: it is tested on the same path.
        let line = line.replacen(r#""a":{"b""#, r#""\u0061":{"b""#, 1);
        let e = s.scan(&line).unwrap();
        assert!(!e.present(f[0]), "{line}");
        assert_eq!(e.number(f[1]), Some(2.0), "{line}");
    }
    // The replaced keys of an inner object are found before those of the object around it,
    // though they lie after them in the line: looked up in order all the same.
    let line = r#"{"a":{"b":1},"x":{"q":1,"q":2,"r":1,"r":2,"s":1,"s":2},"a":{"c":2},"k":0}"#;
    let e = s.scan(line).unwrap();
    assert!(!e.present(f[0]), "{line}");
    assert_eq!(e.number(f[1]), Some(2.0), "{line}");
    // Many keys in one object, a few of them repeated, the wanted one among them.
    let mut line = String::from(r#"{"a":{"b":1},"big":{"#);
    for i in 0..20_000 {
        line.push_str(&format!(r#""k{}":{i},"#, i % 19_990));
    }
    line.push_str(r#""end":0},"a":{"c":2}}"#);
    let e = s.scan(&line).unwrap();
    assert!(!e.present(f[0]));
    assert_eq!(e.number(f[1]), Some(2.0));
}

/// Replaced keys below the event itself, in objects the walk opens: the first occurrence and
/// everything in it are not read, at every level and in every spelling (the search for
/// replaced keys goes down through the objects, as the walk does).
#[test]
fn replaced_keys_in_nested_wanted_objects_are_skipped() {
    let (mut s, g, f) = grouped(&["a.b"], &["a.b.c", "a.b.d", "a.b.x.c"]);
    let (ab, c, d, xc) = (g[0], f[0], f[1], f[2]);
    for line in [
        r#"{"a":{"b":{"c":1},"b":{"d":2}}}"#,
        r#"{"a":{"\u0062":{"c":1},"b":{"d":2}}}"#,
        r#"{"a":{"b":{"c":1},"\u0062":{"d":2}}}"#,
        r#"{"a":{"b.c":1,"b":{"d":2},"b.c":{"x":0},"b.c":[]}}"#,
    ] {
        let e = s.scan(line).unwrap();
        assert_eq!(e.number(d), Some(2.0), "{line}");
        assert_ne!(e.number(c), Some(1.0), "{line}");
    }
    let e = s.scan(r#"{"a":{"b":{"c":1},"b":5}}"#).unwrap();
    assert_eq!((e.number(ab), e.present(c)), (Some(5.0), false));
    assert_eq!(e.writable(c), Err(Collision::Blocked));
    let e = s.scan(r#"{"a":{"b":5,"b":{"c":1}}}"#).unwrap();
    assert_eq!(e.number(c), Some(1.0));
    // Two levels below the event.
    let e = s.scan(r#"{"a":{"b":{"x":{"c":1},"x":2,"d":3}}}"#).unwrap();
    assert_eq!((e.present(xc), e.number(d)), (false, Some(3.0)));
}

#[test]
fn arrays_where_an_object_belongs_are_skipped_and_block_writing() {
    let (mut s, f) = schema(&PATHS);
    let line = r#"{"destination":[{"ip":"1.2.3.4"},{"ip":"5.6.7.8"}],"source":{"bytes":3}}"#;
    let e = s.scan(line).unwrap();
    assert!(!e.present(f[1]));
    assert_eq!(e.writable(f[0]), Err(Collision::Blocked));
    assert_eq!(e.number(f[3]), Some(3.0));
}

fn writer_schema() -> (Scanner, Vec<FieldId>) {
    let mut b = SchemaBuilder::new();
    let ids = vec![
        b.field("destination.geo.country_name"),
        b.field("destination.geo.country_iso_code"),
        b.field("event.kind"),
        b.group("rule"),
        b.field("tags"),
        b.field("destination.ip"),
    ];
    (Scanner::new(Arc::new(b.build().unwrap())), ids)
}

fn write(s: &mut Scanner, line: &str, adds: &[Add<'_>]) -> (String, Vec<(FieldId, Collision)>) {
    let e = s.scan(line).unwrap();
    let mut out = String::new();
    let refused = e.write(adds, &mut out);
    serde_json::from_str::<serde_json::Value>(&out).expect("still JSON");
    (out, refused)
}

/// Whether the receiving object is empty (no comma before the new member) is read from the
/// line when writing: whitespace of every JSON kind between its braces, and members whose last
/// value ends in `{` inside a string or in an empty object, each take the right punctuation.
#[test]
fn a_new_member_takes_a_comma_only_after_other_members() {
    let (mut s, f) = writer_schema();
    let add = [Add::Field(f[0], r#""Iran""#)];
    for (line, want) in [
        (
            "{\"destination\":{ \t\r\n}}",
            "{\"destination\":{ \t\r\n\"geo\":{\"country_name\":\"Iran\"}}}",
        ),
        (
            r#"{"destination":{"geo":{}}}"#,
            r#"{"destination":{"geo":{"country_name":"Iran"}}}"#,
        ),
        (
            r#"{"destination":{"x":"{"}}"#,
            r#"{"destination":{"x":"{","geo":{"country_name":"Iran"}}}"#,
        ),
        (
            r#"{"destination":{"x":{} }}"#,
            r#"{"destination":{"x":{} ,"geo":{"country_name":"Iran"}}}"#,
        ),
        (
            r#"{"destination":{"geo":{"x":[{}]}}}"#,
            r#"{"destination":{"geo":{"x":[{}],"country_name":"Iran"}}}"#,
        ),
        // A repeated receiving object: the last, empty or not.
        (
            r#"{"destination":{"ip":"1"},"destination":{ }}"#,
            r#"{"destination":{"ip":"1"},"destination":{ "geo":{"country_name":"Iran"}}}"#,
        ),
        (
            r#"{"destination":{ },"destination":{"ip":"1"}}"#,
            r#"{"destination":{ },"destination":{"ip":"1","geo":{"country_name":"Iran"}}}"#,
        ),
        (
            r#"{"destination.geo":{ }}"#,
            r#"{"destination.geo":{ "country_name":"Iran"}}"#,
        ),
    ] {
        let (out, refused) = write(&mut s, line, &add);
        assert_eq!((out.as_str(), refused), (want, vec![]), "{line}");
    }
}

#[test]
fn fields_are_inserted_into_the_preferred_object_and_nothing_is_replaced() {
    let (mut s, f) = writer_schema();
    let adds = [
        Add::Field(f[0], r#""Iran""#),
        Add::Field(f[1], r#""IR""#),
        Add::Field(f[2], r#""alert""#),
        Add::Field(f[3], r#"{"id":"x"}"#),
        Add::Append(f[4], r#""ml""#),
    ];
    let (out, refused) = write(
        &mut s,
        r#"{"destination":{"ip":"5.6.7.8"},"event":{"kind":"event"},"tags":["zeek"]}"#,
        &adds,
    );
    assert_eq!(
        out,
        r#"{"destination":{"ip":"5.6.7.8","geo":{"country_name":"Iran","country_iso_code":"IR"}},"event":{"kind":"event"},"tags":["zeek","ml"],"rule":{"id":"x"}}"#
    );
    assert_eq!(refused, vec![(f[2], Collision::Exists)]);
    // Dotted events: the root receives nested objects; existing dotted keys count.
    let (out, refused) = write(
        &mut s,
        r#"{"destination.ip":"5.6.7.8","event.kind":"event","rule.name":"pan","tags":[]}"#,
        &adds,
    );
    assert_eq!(
        out,
        r#"{"destination.ip":"5.6.7.8","event.kind":"event","rule.name":"pan","tags":["ml"],"destination":{"geo":{"country_name":"Iran","country_iso_code":"IR"}}}"#
    );
    assert_eq!(
        refused,
        vec![(f[2], Collision::Exists), (f[3], Collision::Exists)]
    );
    // Into the nested form when both exist, next to the address that was read.
    let (out, _) = write(
        &mut s,
        r#"{"destination.ip":"1.1.1.1","destination":{"ip":"5.6.7.8"}, "x" : { } }"#,
        &adds[..1],
    );
    assert_eq!(
        out,
        r#"{"destination.ip":"1.1.1.1","destination":{"ip":"5.6.7.8","geo":{"country_name":"Iran"}}, "x" : { } }"#
    );
    // Empty objects take no comma; blocked and present-but-null paths are refused.
    let (out, _) = write(&mut s, r#"{ }"#, &adds[2..3]);
    assert_eq!(out, r#"{ "event":{"kind":"alert"}}"#);
    let (_, refused) = write(
        &mut s,
        r#"{"destination":{"geo":"x"},"tags":"zeek"}"#,
        &adds,
    );
    assert!(refused.contains(&(f[0], Collision::Blocked)));
    assert!(refused.contains(&(f[4], Collision::Exists)));
    let (_, refused) = write(
        &mut s,
        r#"{"destination":{"geo":{"country_name":null}}}"#,
        &adds[..1],
    );
    assert_eq!(refused, vec![(f[0], Collision::Exists)]);
    // The replaced occurrence of a repeated key receives nothing.
    let (out, _) = write(
        &mut s,
        r#"{"destination":{"ip":"8.8.8.8"},"destination":{"ip":"5.6.7.8"}}"#,
        &adds[..1],
    );
    assert_eq!(
        out,
        r#"{"destination":{"ip":"8.8.8.8"},"destination":{"ip":"5.6.7.8","geo":{"country_name":"Iran"}}}"#
    );
}

#[test]
fn whatever_is_accepted_can_be_written() {
    let (mut s, f) = writer_schema();
    for line in [
        r#"{"destination":{"ip":"5.6.7.8","as":{"name":"\ud800"}},"n":1e999}"#,
        &format!(
            r#"{{"big":{},"destination.ip":"5.6.7.8"}}"#,
            "9".repeat(400)
        ),
        &format!(r#"{{"deep":{}1{}}}"#, "[".repeat(125), "]".repeat(125)),
    ] {
        let e = s.scan(line).unwrap();
        let mut out = String::new();
        let refused = e.write(&[Add::Field(f[0], r#""Iran""#)], &mut out);
        assert!(refused.is_empty(), "{line}");
        assert!(out.len() > line.len());
        assert!(s.scan(&out).is_ok(), "{out}");
    }
}

#[test]
fn numbers_and_key_text() {
    let (mut s, f) = schema(&["n"]);
    for (text, number, key) in [
        ("443", Some(443.0), Some("443")),
        ("-0", Some(0.0), Some("-0")),
        ("443.0", Some(443.0), Some("443")),
        ("1.5e3", Some(1500.0), Some("1500")),
        ("0.25", Some(0.25), Some("0.25")),
        (
            "18446744073709551616",
            Some(18446744073709551616.0),
            Some("18446744073709551616"),
        ),
        ("1e999", None, None),
        ("\" 77 \"", Some(77.0), Some(" 77 ")),
        ("\"NaN\"", None, Some("NaN")),
        ("true", None, None),
    ] {
        let line = format!("{{\"n\":{text}}}");
        let e = s.scan(&line).unwrap();
        assert_eq!(e.number(f[0]), number, "{text}");
        assert_eq!(e.key_text(f[0]).as_deref(), key, "{text}");
    }
}

#[test]
fn only_single_json_objects_are_accepted() {
    let (mut s, _) = schema(&PATHS);
    for bad in [
        "[1,2]",
        "\"text\"",
        "",
        "   ",
        "{\"a\":1",
        "{\"a\":1} trailing",
        "{\"a\":1}{}",
        "{\"a\":[1,}",
        "{\"a\":[1 2]}",
        "{\"a\" 1}",
        "{\"a\":1,}",
        "{,}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":-}",
        "{\"a\":1e}",
        "{\"a\":.5}",
        "{\"a\":tru}",
        "{\"a\":nul}",
        "{\"a\":\"x\ty\"}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u12g4\"}",
        "{\"a\":\"unterminated}",
        "{\"destination\":{\"ip\":\"1\",}}",
        "{\"destination\":{\"ip\" \"1\"}}",
        "{\"destination\":[}",
        "{\"a\":{\"b\":1]}",
        "{\"a\":[1}",
        "\u{feff}{}",
        "{'a':1}",
    ] {
        assert!(s.scan(bad).is_err(), "{bad:?}");
    }
    for good in [
        "{}",
        " \t{ } \r",
        "{\"a\" : {\"b\": [true, null, false, -0.5e+3, \"\\u00e9\\/\"]}}",
        "{\"destination\":{}}",
        "{\"destination\":[{\"ip\":1}],\"event\":{\"category\":[]}}",
        "{\"\":1,\"destination.\":2,\".ip\":3,\"destination..ip\":4}",
    ] {
        assert!(s.scan(good).is_ok(), "{good:?}");
    }
}

#[test]
fn nesting_is_limited_like_serde_json() {
    let (mut s, _) = schema(&PATHS);
    for depth in [2, 126, 127, 128, 129, 400] {
        let line = format!(
            "{{\"x\":{}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        );
        let ours = s.scan(&line).is_ok();
        let serde = serde_json::from_str::<serde_json::Value>(&line).is_ok();
        assert_eq!(ours, serde, "depth {depth}");
        assert_eq!(ours, depth <= MAX_DEPTH as usize, "depth {depth}");
    }
    // Through wanted objects as well: the event, `destination`, then arrays.
    for (arrays, ok) in [(125, true), (126, false)] {
        let line = format!(
            "{{\"destination\":{{\"geo\":{}1{}}}}}",
            "[".repeat(arrays),
            "]".repeat(arrays)
        );
        assert_eq!(s.scan(&line).is_ok(), ok, "{arrays}");
    }
}

#[test]
fn agrees_with_serde_json_on_what_is_json() {
    let (mut s, _) = schema(&PATHS);
    let samples = [
        r#"{"destination":{"ip":"1.2.3.4","geo":{"country_name":"X"}},"tags":["a"]}"#,
        r#"{"a":"\u0000"}"#,
        r#"{"a":"\ud800"}"#,
        r#"{"a":12345678901234567890123}"#,
        r#"{"a":1E+2,"b":-0,"c":0.0e-0}"#,
        r#"{"a":[[],{},[{}],""]}"#,
        r#"{"a":"\/\b\f\n\r\t\"\\"}"#,
        "{\"a\":\"\u{7f}\u{80}\u{10ffff}\"}",
        r#"{"a" :1 , "b":2 }"#,
        r#"{"a":1 ,}"#,
        r#"{"a":+1}"#,
        r#"{"a":1.5E}"#,
        r#"{"a":[,1]}"#,
        r#"{"a":truex}"#,
        r#"{"a":"ab"c}"#,
    ];
    for line in samples {
        let ours = s.scan(line).is_ok();
        let serde = serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok();
        assert_eq!(ours, serde, "{line}");
    }
}

#[test]
fn invalid_paths_are_refused() {
    for bad in ["", "a..b", ".a", "a."] {
        let mut b = SchemaBuilder::new();
        b.field(bad);
        assert_eq!(b.build().unwrap_err(), SchemaError::InvalidPath(bad.into()));
    }
    let mut b = SchemaBuilder::new();
    b.field(&["x"; MAX_SEGMENTS + 1].join("."));
    assert!(matches!(b.build(), Err(SchemaError::TooDeep(_))));
}

/// The walk's stack of open wanted objects with the most frames it can hold (15 of its 17
/// slots): a path of `MAX_SEGMENTS` segments opens an object at every level, and each level's own field comes after its inner object
/// closed, so it is read with the frame popped back from the stack (a frame restored from the
/// wrong slot would read it as another level's field, or miss it).
#[test]
fn every_level_of_the_deepest_path_is_read_after_its_inner_object_closes() {
    let levels = MAX_SEGMENTS - 1;
    let deepest = ["x"; MAX_SEGMENTS].join(".");
    let mut paths = vec![deepest];
    paths.extend((0..=levels).map(|k| {
        let mut path = vec!["x"; k];
        path.push("y");
        path.join(".")
    }));
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let (mut s, f) = schema(&paths);
    let mut line = String::new();
    for _ in 0..levels {
        line.push_str(r#"{"x":"#);
    }
    line.push_str(r#"{"x":99,"y":15}"#);
    for k in (0..levels).rev() {
        line.push_str(&format!(r#","y":{k}}}"#));
    }
    let e = s.scan(&line).unwrap();
    assert_eq!(e.number(f[0]), Some(99.0), "{line}");
    for (k, &field) in f[1..].iter().enumerate() {
        assert_eq!(e.number(field), Some(k as f64), "level {k}: {line}");
    }
}

/// An empty key has the words of an empty table slot (both zero): it is found in no table,
/// at the top or below, and the keys after it are read as usual.
#[test]
fn empty_keys_match_nothing() {
    let (mut s, f) = schema(&["k", "a.b"]);
    let e = s
        .scan(r#"{"":1,"a":{"":2,"b":3,"":4},"\u0000":5,"k":6,"":7}"#)
        .unwrap();
    assert_eq!((e.number(f[0]), e.number(f[1])), (Some(6.0), Some(3.0)));
    let e = s.scan(r#"{"":{"b":1},"a":{"":{"b":2}}}"#).unwrap();
    assert!(!e.present(f[0]) && !e.present(f[1]));
}

/// The table lookup itself never returns an empty slot for the empty key, whose words are an
/// empty slot's (both zero): at every node, padded (ending in the buffer's first eight bytes)
/// or read from the buffer. The scan above cannot tell, since an empty slot leads nowhere.
#[test]
fn an_empty_key_finds_no_empty_slot() {
    let mut b = SchemaBuilder::new();
    for path in ["k", "a.b", "a.c.d"] {
        b.field(path);
    }
    let schema = b.build().unwrap();
    let line = br#"{"":1,         "":2}"#;
    for node in schema.nodes.iter() {
        for at in [2, 16] {
            assert!(node.find(line, at, at).is_none(), "at {at}");
        }
    }
}

#[test]
fn a_field_that_is_also_a_prefix() {
    let (mut s, f) = schema(&["rule", "rule.name"]);
    let e = s.scan(r#"{"rule":{"name":"pan"}}"#).unwrap();
    assert!(e.present(f[0]));
    assert_eq!(e.str(f[1]), Some("pan"));
    let e = s.scan(r#"{"rule":"x","rule.name":"y"}"#).unwrap();
    assert!(e.present(f[0]));
    assert_eq!(e.str(f[1]), Some("y"));
    // The same with the longer path declared first: the object's field does not depend on it.
    let (mut s, f) = schema(&["rule.name", "rule"]);
    let e = s.scan(r#"{"rule":{"name":"pan"}}"#).unwrap();
    assert!(e.present(f[1]));
    assert_eq!(e.str(f[0]), Some("pan"));
    // A group is present through any key below it.
    let mut b = SchemaBuilder::new();
    let rule = b.group("rule");
    let mut s = Scanner::new(Arc::new(b.build().unwrap()));
    for line in [
        r#"{"rule":{}}"#,
        r#"{"rule.name":"y"}"#,
        r#"{"rule.a.b":null}"#,
    ] {
        let e = s.scan(line).unwrap();
        assert_eq!(e.writable(rule), Err(Collision::Exists), "{line}");
    }
    let e = s.scan(r#"{"rules":1,"x":{"rule":1}}"#).unwrap();
    assert_eq!(e.writable(rule), Ok(()));
}

/// A scanner for the groups `groups` and the fields `fields`, with their ids.
fn grouped(groups: &[&str], fields: &[&str]) -> (Scanner, Vec<FieldId>, Vec<FieldId>) {
    let mut b = SchemaBuilder::new();
    let g = groups.iter().map(|p| b.group(p)).collect();
    let f = fields.iter().map(|p| b.field(p)).collect();
    (Scanner::new(Arc::new(b.build().unwrap())), g, f)
}

/// A group with sub-fields of its own (`rule` with `rule.name`): present through any key below
/// it, nested or dotted, escaped or not, the sub-field's own key included; `{"rule.zzz":1}` was
/// missed, since the dotted key's walk went on into `rule`'s node and missed there.
#[test]
fn a_group_with_sub_fields_is_present_through_any_key_below_it() {
    let (mut s, g, f) = grouped(&["rule"], &["rule.name"]);
    let (rule, name) = (g[0], f[0]);
    for line in [
        r#"{"rule":{"zzz":1}}"#,
        r#"{"rule.zzz":1}"#,
        r#"{"rule.zzz":null}"#,
        r#"{"rule.zzz":{"name":"x"}}"#,
        r#"{"rule.a.b":[1]}"#,
        r#"{"rule..x":1}"#,
        r#"{"rule.":1}"#,
        r#"{"rul\u0065.zzz":1}"#,
        r#"{"rule\u002ezzz":1}"#,
        r#"{"x":1,"rule.zzz":"y","z":{"rule":1}}"#,
    ] {
        let e = s.scan(line).unwrap();
        assert!(e.present(rule), "{line}");
        assert_eq!(e.writable(rule), Err(Collision::Exists), "{line}");
        // Nothing below `rule.zzz` is `rule.name`.
        assert!(!e.present(name), "{line}");
        assert!(!e.conflicting(), "{line}");
    }
    // The sub-field itself, in every spelling: both it and the group.
    for line in [
        r#"{"rule":{"name":"x"}}"#,
        r#"{"rule.name":"x"}"#,
        r#"{"rule.n\u0061me":"x"}"#,
        r#"{"rule\u002ename":"x"}"#,
    ] {
        let e = s.scan(line).unwrap();
        assert!(e.present(rule), "{line}");
        assert_eq!(e.str(name), Some("x"), "{line}");
    }
    // Not below it: another key, an empty first segment, a `rule` that is not at the top.
    for line in [
        r#"{"rules.zzz":1}"#,
        r#"{".rule.zzz":1}"#,
        r#"{"rulezzz":1}"#,
        r#"{"x":{"rule.zzz":1}}"#,
        r#"{"x.rule.zzz":1}"#,
    ] {
        let e = s.scan(line).unwrap();
        assert_eq!(e.writable(rule), Ok(()), "{line}");
    }
}

/// Which value a group holds when keys at its path and below it are both there, in both
/// orders: the value at its own path (an object, a string, `null`), never counted as a
/// conflict; with only keys below it, no text of its own. `bare` has no wanted field below.
#[test]
fn a_group_keeps_its_own_value_over_keys_below_it_in_either_order() {
    let (mut s, g, f) = grouped(&["rule", "bare"], &["rule.name"]);
    let (rule, bare, name) = (g[0], g[1], f[0]);
    for (id, first, second, raw) in [
        (
            rule,
            r#""rule":{"a":1}"#,
            r#""rule.zzz":2"#,
            Some(r#"{"a":1}"#),
        ),
        (
            rule,
            r#""rule":{"a":1}"#,
            r#""rule.name":"n""#,
            Some(r#"{"a":1}"#),
        ),
        (rule, r#""rule":"x""#, r#""rule.zzz":2"#, Some(r#""x""#)),
        (rule, r#""rule":null"#, r#""rule.zzz":2"#, Some("null")),
        (
            bare,
            r#""bare":{"a":1}"#,
            r#""bare.zzz":2"#,
            Some(r#"{"a":1}"#),
        ),
        (bare, r#""bare":7"#, r#""bare.zzz":2"#, Some("7")),
        (rule, r#""rule.q":1"#, r#""rule.zzz":2"#, None),
    ] {
        for line in [
            format!("{{{first},{second}}}"),
            format!("{{{second},{first}}}"),
        ] {
            let e = s.scan(&line).unwrap();
            assert_eq!(e.raw(id).as_deref(), raw, "{line}");
            assert_eq!(e.writable(id), Err(Collision::Exists), "{line}");
            assert!(!e.conflicting(), "{line}");
            if line.contains("rule.name") {
                assert_eq!(e.str(name), Some("n"), "{line}");
            }
        }
    }
    // A key below it only: present, with no text (its object is written nowhere in the line).
    let e = s.scan(r#"{"rule.zzz":"y","bare.q":null}"#).unwrap();
    for id in [rule, bare] {
        assert!(e.present(id));
        assert_eq!((e.raw(id), e.str(id), e.number(id)), (None, None, None));
    }
}

/// Groups deeper down and groups within groups: every group a key passes on its way is
/// present, in every object a form of its path can be in.
#[test]
fn every_group_a_dotted_key_passes_is_present() {
    let (mut s, groups, f) = grouped(&["a", "a.g"], &["a.g.x.y"]);
    let (a, g, y) = (groups[0], groups[1], f[0]);
    for (line, want_y) in [
        (r#"{"a.g.x.y":1}"#, true),
        (r#"{"a.g.x":{"y":1}}"#, true),
        (r#"{"a":{"g.x.y":1}}"#, true),
        (r#"{"a":{"g.x":{"y":1}}}"#, true),
        (r#"{"a.g":{"x.y":1}}"#, true),
        (r#"{"a.g.q":1}"#, false),
        (r#"{"a":{"g.q":null}}"#, false),
        (r#"{"a.g.x":5}"#, false),
    ] {
        let e = s.scan(line).unwrap();
        assert!(e.present(a) && e.present(g), "{line}");
        assert_eq!(e.number(y).is_some(), want_y, "{line}");
    }
    let e = s.scan(r#"{"a.q":1}"#).unwrap();
    assert!(e.present(a) && !e.present(g));
    assert_eq!(e.writable(g), Ok(()));
    // The exact pass: a replaced object's dotted keys imply nothing; a replaced dotted key
    // implies what the key replacing it implies.
    let e = s.scan(r#"{"a":{"g.q":1},"a":5}"#).unwrap();
    assert_eq!(e.number(a), Some(5.0));
    // Not there (it would be `Exists`); nowhere to go either, below a number.
    assert_eq!(e.writable(g), Err(Collision::Blocked));
    let e = s
        .scan(r#"{"a.g.q":1,"a.g.q":2,"a.g.x.y":3,"a.g.x.y":4}"#)
        .unwrap();
    assert!(e.present(a) && e.present(g));
    assert_eq!(e.number(y), Some(4.0));
}

/// The alert side of it: a group that is there through a dotted key below it is not written
/// again (`{"rule.name":..}` got a second `rule` object from the alert).
#[test]
fn a_group_present_only_through_a_sub_field_is_not_written_again() {
    let (mut s, g, _) = grouped(&["rule"], &["rule.name"]);
    let rule = g[0];
    for line in [r#"{"rule.name":"pan"}"#, r#"{"rule.id":"7"}"#] {
        let (out, refused) = write(&mut s, line, &[Add::Field(rule, r#"{"id":"x"}"#)]);
        assert_eq!(out, line);
        assert_eq!(refused, vec![(rule, Collision::Exists)]);
    }
}

/// A small deterministic generator for the property tests below (no crate needed).
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// Mostly plain ASCII, with the bytes strings stop at (`"`, `\`, controls), escapes and
    /// multi-byte characters mixed in.
    fn text(&mut self, len: usize) -> String {
        let mut s = String::new();
        while s.len() < len {
            match self.next() % 16 {
                0 => s.push('"'),
                1 => s.push('\\'),
                2 => s.push_str(
                    ["\\n", "\\u00e9", "\\\"", "\\\\", "\\x", "\\u12"][self.next() as usize % 6],
                ),
                3 => s.push(char::from(u8::try_from(self.next() % 0x20).unwrap_or(0))),
                4 => s.push(['é', '€', '\u{7f}', '𝄞'][self.next() as usize % 4]),
                _ => s.push(char::from(
                    b' ' + u8::try_from(self.next() % 95).unwrap_or(0),
                )),
            }
        }
        s
    }
}

/// The words of a key as [`schema::key_words`] documents them, byte by byte: a key of eight
/// bytes or more, its first eight and (when longer) its last eight, little-endian; a shorter
/// key, its bytes with the last one lowest and zeros above them.
fn reference_words(key: &[u8]) -> (u64, u64) {
    let word = |bytes: &[u8]| {
        bytes
            .iter()
            .rev()
            .fold(0u64, |w, &c| (w << 8) | u64::from(c))
    };
    match key.len() {
        0..=7 => (key.iter().fold(0u64, |w, &c| (w << 8) | u64::from(c)), 0),
        8 => (word(&key[..8]), 0),
        len => (word(&key[..8]), word(&key[len - 8..])),
    }
}

/// `key_words` and `has_dot` on every span of random buffers agree with the key alone: the
/// bytes around a key (dots, NUL, quotes, 0xff) never enter its words or its dot test, at any
/// length and wherever it ends (before, at and after the buffer's eighth byte).
#[test]
fn key_words_and_dots_depend_on_the_key_alone() {
    use super::schema::{has_dot, key_words};
    const ALPHABET: &[u8] = b"..\0\"{a}z\xff";
    let mut r = Bytes(0x5ca1_ab1e);
    for _ in 0..2_000 {
        let len = r.next() as usize % 40;
        let buf: Vec<u8> = (0..len)
            .map(|_| ALPHABET[r.next() as usize % ALPHABET.len()])
            .collect();
        for s in 0..=len {
            for e in s..=len.min(s + 24) {
                let key = &buf[s..e];
                assert_eq!(
                    key_words(&buf, s, e),
                    reference_words(key),
                    "{buf:?} {s}..{e}"
                );
                assert_eq!(has_dot(&buf, s, e), key.contains(&b'.'), "{buf:?} {s}..{e}");
            }
        }
    }
}

#[test]
fn string_stop_index_marks_every_byte_value_as_the_portable_version_does() {
    // All 256 byte values, in four blocks (the SSE2 test is an unsigned minimum of each byte
    // xor 2 with 0x20: the values around 0x20, 0x22 and 0x80 are where it could go wrong).
    let bytes: Vec<u8> = (0..=255u8).collect();
    let mut mask = Vec::new();
    grammar::index_stops(&bytes, &mut mask);
    for (w, chunk) in mask.iter().zip(bytes.chunks_exact(64)) {
        let block: &[u8; 64] = chunk.try_into().unwrap_or(&[b' '; 64]);
        assert_eq!(*w, grammar::stops64_bytes(block), "block from {}", chunk[0]);
    }
    let marked: Vec<usize> = (0..256)
        .filter(|i| mask[i / 64] >> (i % 64) & 1 == 1)
        .collect();
    let expected: Vec<usize> = (0..0x20).chain([0x22, 0x5c]).collect();
    assert_eq!(marked, expected);
}

#[test]
fn string_stop_index_marks_exactly_the_stop_bytes() {
    let mut rng = Bytes(1);
    let mut mask = Vec::new();
    for len in 0..300 {
        let text = rng.text(len);
        let b = text.as_bytes();
        grammar::index_stops(b, &mut mask);
        assert_eq!(mask.len(), b.len().div_ceil(64), "{text:?}");
        for (i, &c) in b.iter().enumerate() {
            let stop = c == b'"' || c == b'\\' || c < 0x20;
            assert_eq!(
                mask[i / 64] >> (i % 64) & 1 == 1,
                stop,
                "byte {i} of {text:?}"
            );
        }
        // Nothing is marked past the line; the portable version agrees word for word.
        for (w, chunk) in mask.iter().zip(b.chunks(64)) {
            let mut pad = [b' '; 64];
            pad[..chunk.len()].copy_from_slice(chunk);
            assert_eq!(*w, grammar::stops64_bytes(&pad), "{text:?}");
            if chunk.len() < 64 {
                assert_eq!(*w >> chunk.len(), 0, "{text:?}");
            }
        }
    }
    // Every byte value, at every position of a word.
    let all: Vec<u8> = (0..=255u8).cycle().take(64 * 9).collect();
    for start in 0..64 {
        let b = &all[start..];
        grammar::index_stops(b, &mut mask);
        for (i, &c) in b.iter().enumerate() {
            let stop = c == b'"' || c == b'\\' || c < 0x20;
            assert_eq!(
                mask[i / 64] >> (i % 64) & 1 == 1,
                stop,
                "byte {c:#x} at {i}"
            );
        }
    }
}

#[test]
fn string_ends_found_through_the_index_match_the_byte_scan() {
    use grammar::{Indexed, Strings, Swar};
    let mut rng = Bytes(2);
    let mut mask = Vec::new();
    for len in 0..400 {
        let text = rng.text(len);
        let b = text.as_bytes();
        grammar::index_stops(b, &mut mask);
        // From every position: the same end, escapes flag and error (kind and offset).
        for pos in 0..=b.len() {
            assert_eq!(
                Indexed(&mask).end(b, pos),
                Swar.end(b, pos),
                "from {pos} in {text:?}"
            );
        }
    }
}

/// Strings whose quotes, escapes or backslash runs sit on either side of a 64-byte block edge
/// of the stop index, from every offset: each string ends where the byte scan says, and every
/// line is accepted or refused as serde_json accepts or refuses it.
#[test]
fn strings_escapes_and_backslash_runs_across_the_block_edge() {
    use grammar::{Indexed, Strings, Swar};
    let (mut s, _) = schema(&PATHS);
    let mut mask = Vec::new();
    let mut pieces: Vec<String> = vec![
        r#""plain string of some length""#.into(),
        r#""a\"b""#.into(),
        r#""\u00e9\u12aB""#.into(),
        r#""\u12g4""#.into(),
        r#""\x""#.into(),
        "\"tab\there\"".into(),
        r#""open"#.into(),
    ];
    // Runs of 1 to 70 backslashes before a quote: an odd run escapes it, an even one does not.
    for run in 1..=70 {
        pieces.push(format!("\"{}\"", "\\".repeat(run)));
        pieces.push(format!("\"{}n\"", "\\".repeat(run)));
    }
    for piece in &pieces {
        for pad in 0..=130 {
            let line = format!(r#"{{"pad":"{}","k":{piece}}}"#, "p".repeat(pad));
            let b = line.as_bytes();
            grammar::index_stops(b, &mut mask);
            let start = line.len() - piece.len();
            assert_eq!(Indexed(&mask).end(b, start), Swar.end(b, start), "{line}");
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(&line).is_ok();
            assert_eq!(s.scan(&line).is_ok(), serde, "{line}");
        }
    }
}

/// Wanted values (strings with escapes, arrays, numbers) on either side of a block edge, from
/// every offset, read as serde_json reads them.
#[test]
fn values_across_the_block_edge_read_as_serde_json_reads_them() {
    let (mut s, f) = schema(&PATHS);
    let values = [
        r#""10.1.2.3""#,
        r#""a\"b\\\\""#,
        r#""\u0041\ud83d\ude00 x""#,
        r#"["network","x\\"]"#,
        "-12.5e3",
    ];
    for value in values {
        for pad in 0..=130 {
            let line = format!(
                r#"{{"pad":"{}","destination":{{"ip":{value}}},"event" : {{ "category" :{value} }} }}"#,
                "p".repeat(pad)
            );
            let tree: serde_json::Value = serde_json::from_str(&line).unwrap();
            let e = s
                .scan(&line)
                .unwrap_or_else(|err| panic!("{err} in {line}"));
            for (id, path) in [(f[1], "/destination/ip"), (f[2], "/event/category")] {
                let read: serde_json::Value =
                    serde_json::from_str(&e.raw(id).expect(path)).unwrap();
                assert_eq!(Some(&read), tree.pointer(path), "{path} in {line}");
            }
        }
    }
}

/// The string-array fast path ends every array where the general skip does and fails exactly
/// as it does (kind and offset), from every offset around a block edge of the stop index:
/// arrays of strings (its case), and everything it must hand over.
#[test]
fn string_arrays_are_skipped_as_the_general_skip_skips_them() {
    use grammar::{skip_array, skip_nested, Indexed};
    let arrays = [
        r#"["network"]"#,
        r#"["connection","end"]"#,
        r#"[ "a" , "b\"c" ,"\u00e9"]"#,
        "[\"a\",\n\t\"b\"\r]",
        r#"[]"#,
        r#"[ ]"#,
        r#"["a",]"#,
        r#"["a" "b"]"#,
        r#"["a",1,"b"]"#,
        r#"["a",["b"],{"c":"d"}]"#,
        r#"[1,2]"#,
        r#"["a"}"#,
        r#"["a""#,
        r#"["a"#,
        r#"["\x"]"#,
        "[\"tab\there\"]",
        r#"["a",,"b"]"#,
        r#"["a",null]"#,
    ];
    let mut mask = Vec::new();
    for array in arrays {
        for pad in 0..=70 {
            let line = format!(r#"{{"pad":"{}","k":{array}}}"#, "p".repeat(pad));
            let b = line.as_bytes();
            grammar::index_stops(b, &mut mask);
            let at = line.len() - array.len() - 1;
            for depth in [1, MAX_DEPTH - 1, MAX_DEPTH] {
                assert_eq!(
                    skip_array(b, Indexed(&mask), at, depth),
                    skip_nested(b, Indexed(&mask), at, depth),
                    "depth {depth}: {line}"
                );
            }
            // Unterminated at the very end of the line as well.
            let cut = &b[..line.len() - 1];
            grammar::index_stops(cut, &mut mask);
            assert_eq!(
                skip_array(cut, Indexed(&mask), at, 1),
                skip_nested(cut, Indexed(&mask), at, 1),
                "{line} without its last byte"
            );
        }
    }
    // Wanted (`event.category`) and unwanted arrays read as serde_json reads them.
    let (mut s, f) = schema(&PATHS);
    for array in arrays {
        let line = format!(r#"{{"event":{{"type":{array},"category":{array}}}}}"#);
        let tree = serde_json::from_str::<serde_json::Value>(&line).ok();
        match (s.scan(&line), tree) {
            (Ok(e), Some(tree)) => {
                let read: serde_json::Value =
                    serde_json::from_str(&e.raw(f[2]).expect("category")).unwrap();
                assert_eq!(Some(&read), tree.pointer("/event/category"), "{line}");
            }
            (Err(_), None) => {}
            (ours, serde) => panic!("{line}: scanner {:?}, serde_json {serde:?}", ours.err()),
        }
    }
}

/// The eight-at-a-time digit test marks exactly the bytes that are not ASCII digits: every
/// byte value at every place of a word, and runs of digits of every length ending at every
/// place of the line (the last seven bytes are read one at a time).
#[test]
fn digit_runs_are_found_eight_bytes_at_a_time() {
    for v in 0..=255u8 {
        for i in 0..8 {
            let mut bytes = *b"01234567";
            bytes[i] = v;
            let marks = grammar::non_digits(u64::from_le_bytes(bytes));
            let expected = bytes.iter().enumerate().fold(0u64, |m, (j, c)| {
                m | (u64::from(!c.is_ascii_digit()) << (8 * j + 7))
            });
            assert_eq!(marks, expected, "byte {v:#x} at {i}");
        }
    }
    let (mut s, f) = schema(&["n"]);
    for len in 1..=30 {
        let digits: String = (0..len).map(|i| char::from(b'1' + (i % 9) as u8)).collect();
        for (before, after) in [("", ""), ("-", ""), ("", ".5"), ("", "e7"), ("-", ".25E-3")] {
            for pad in 0..=9 {
                let text = format!("{before}{digits}{after}");
                let line = format!("{{\"n\":{text}{}}}", " ".repeat(pad));
                let e = s.scan(&line).unwrap_or_else(|err| panic!("{err}: {line}"));
                assert_eq!(e.raw(f[0]).as_deref(), Some(text.as_str()), "{line}");
                let expected: f64 = text.parse().unwrap();
                assert_eq!(e.number(f[0]), Some(expected), "{line}");
            }
        }
    }
}

/// White space (or a stray byte) at every token boundary of an event: read as serde_json reads
/// it, or refused as serde_json refuses it.
#[test]
fn white_space_and_stray_bytes_at_every_token_boundary() {
    let (mut s, f) = schema(&PATHS);
    let tokens = [
        "{",
        r#""event""#,
        ":",
        "{",
        r#""category""#,
        ":",
        "[",
        r#""network""#,
        ",",
        r#""web""#,
        "]",
        ",",
        r#""kind""#,
        ":",
        r#""event""#,
        "}",
        ",",
        r#""source""#,
        ":",
        "{",
        r#""bytes""#,
        ":",
        "120",
        "}",
        ",",
        r#""destination""#,
        ":",
        "{",
        r#""ip""#,
        ":",
        r#""1.2.3.4""#,
        ",",
        r#""port""#,
        ":",
        "443",
        "}",
        "}",
    ];
    for gap in 0..=tokens.len() {
        for filler in [" ", "\t", "\r\n", "  \n ", "\u{0}", "x", ",", "\u{1f}"] {
            let mut line = String::new();
            for (i, t) in tokens.iter().enumerate() {
                if i == gap {
                    line.push_str(filler);
                }
                line.push_str(t);
            }
            if gap == tokens.len() {
                line.push_str(filler);
            }
            let tree = serde_json::from_str::<serde_json::Value>(&line).ok();
            match (s.scan(&line), tree) {
                (Ok(e), Some(tree)) => {
                    for (id, path) in [
                        (f[1], "/destination/ip"),
                        (f[2], "/event/category"),
                        (f[3], "/source/bytes"),
                    ] {
                        let read: serde_json::Value =
                            serde_json::from_str(&e.raw(id).expect(path)).unwrap();
                        assert_eq!(Some(&read), tree.pointer(path), "{path} in {line:?}");
                    }
                }
                (Err(_), None) => {}
                (ours, serde) => {
                    panic!("{line:?}: scanner {:?}, serde_json {serde:?}", ours.err())
                }
            }
        }
    }
}

/// Groups on generated events against serde_json's tree: a group is there (in some form,
/// maybe `null`: `writable` says `Exists`) exactly when some key spells its path or a path
/// below it, through objects only; its text is what `egresswatch_common::path::get` finds at
/// its path, or none when only keys below it are there. The fields below the groups are
/// read as that function reads them.
#[test]
fn groups_agree_with_a_reading_of_serde_jsons_tree() {
    const KEYS: [&str; 17] = [
        "rule",
        "rule.name",
        "rule.zzz",
        "rule.",
        "name",
        "zzz",
        "rules",
        "a",
        "a.g",
        "a.g.x",
        "g",
        "g.x",
        "x",
        "y",
        "x.y",
        "rul\\u0065.q",
        "a\\u002eg",
    ];
    const GROUPS: [&str; 3] = ["rule", "a", "a.g"];
    const FIELDS: [&str; 2] = ["rule.name", "a.g.x.y"];
    fn value(rng: &mut Bytes, depth: u32, out: &mut String) {
        match rng.next() % 8 {
            0 => out.push_str("null"),
            1 => out.push_str("\"s\""),
            2 => out.push_str("[1,{\"name\":2}]"),
            3 | 4 if depth < 3 => object(rng, depth + 1, out),
            n => out.push_str(&n.to_string()),
        }
    }
    fn object(rng: &mut Bytes, depth: u32, out: &mut String) {
        out.push('{');
        for i in 0..rng.next() % 4 {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(KEYS[rng.next() as usize % KEYS.len()]);
            out.push_str("\":");
            value(rng, depth, out);
        }
        out.push('}');
    }
    /// Some key of `v` (an object) spells `path` or a path below it, through objects.
    fn below(v: &serde_json::Value, path: &[&str]) -> bool {
        v.as_object().is_some_and(|map| {
            map.iter().any(|(k, v)| {
                let ks: Vec<&str> = k.split('.').collect();
                let n = ks.len().min(path.len());
                ks[..n] == path[..n] && (ks.len() >= path.len() || below(v, &path[n..]))
            })
        })
    }
    let (mut s, groups, fields) = grouped(&GROUPS, &FIELDS);
    let mut rng = Bytes(3);
    let mut line = String::new();
    let mut implied = 0;
    for _ in 0..20_000 {
        line.clear();
        object(&mut rng, 0, &mut line);
        let tree: serde_json::Value = serde_json::from_str(&line).unwrap();
        let e = s.scan(&line).unwrap();
        let read = |id| {
            e.raw(id)
                .map(|raw| serde_json::from_str::<serde_json::Value>(&raw).unwrap())
        };
        for (path, &id) in GROUPS.iter().zip(&groups) {
            let there = below(&tree, &path.split('.').collect::<Vec<_>>());
            let exists = e.writable(id) == Err(Collision::Exists);
            assert_eq!(exists, there, "{path} in {line}");
            let own = egresswatch_common::path::get(&tree, path);
            assert_eq!(read(id).as_ref(), own, "{path} in {line}");
            implied += usize::from(there && own.is_none());
        }
        for (path, &id) in FIELDS.iter().zip(&fields) {
            let own = egresswatch_common::path::get(&tree, path);
            assert_eq!(read(id).as_ref(), own, "{path} in {line}");
        }
    }
    // The generator reaches the case this is about.
    assert!(implied > 1_000, "{implied}");
}
