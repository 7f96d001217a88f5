//! CSV imports through `POST /api/v1/imports` as spreadsheets save them: GB18030 from
//! Chinese Excel (declared with `?charset=` or detected), UTF-16 "Unicode text" with
//! tabs, CRLF line numbers, and the one error for a file whose encoding is unknown.
//! Names and ids are invented.

use serde_json::Value;

use crate::harness::*;

/// "张三" and "计算机学院" in GBK, as Chinese Excel's "CSV" writes them.
const ZHANG_SAN_GBK: &[u8] = b"\xd5\xc5\xc8\xfd";
const COMPUTING_GBK: &[u8] = b"\xbc\xc6\xcb\xe3\xbb\xfa\xd1\xa7\xd4\xba";

fn gbk_file(person: &str, card: u64) -> Vec<u8> {
    [
        b"person_id,name,department,kind,card_no\r\n".as_slice(),
        person.as_bytes(),
        b",",
        ZHANG_SAN_GBK,
        b",",
        COMPUTING_GBK,
        format!(",student,{card}\r\n").as_bytes(),
    ]
    .concat()
}

fn post(d: &Daemon, token: &str, query: &str, body: &[u8]) -> (u16, Value) {
    let (st, text) = http(
        d.admin_addr(),
        "POST",
        &format!("/api/v1/imports{query}"),
        Some(token),
        "text/csv",
        body,
    );
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (st, json)
}

fn name_of(d: &Daemon, token: &str, person: &str) -> Value {
    let (st, text) = d.api("GET", &format!("/api/v1/persons/{person}"), Some(token), None);
    assert_eq!(st, 200, "{text}");
    let p: Value = serde_json::from_str(&text).unwrap();
    p["person"]["name"].clone()
}

#[tokio::test]
async fn desk_imports_read_the_files_chinese_excel_saves() {
    let dir = tempfile::tempdir().unwrap();
    let director = operator_add(dir.path(), "zhao", "director").expect("operator add");
    let d = Daemon::start(dir.path());

    // GB18030 declared, then detected.
    let (st, r) = post(&d, &director, "?charset=gb18030", &gbk_file("GB1", 62_220_000_900_001));
    assert_eq!(
        (st, &r["encoding"], &r["applied"]),
        (200, &Value::from("gb18030"), &Value::from(true)),
        "{r}"
    );
    assert_eq!(name_of(&d, &director, "GB1"), "张三");
    let (st, r) = post(&d, &director, "", &gbk_file("GB2", 62_220_000_900_002));
    assert_eq!((st, &r["encoding"]), (200, &Value::from("gb18030")), "{r}");
    assert!(
        r["encoding_reason"].as_str().unwrap().contains("no charset was given"),
        "{r}"
    );
    assert_eq!(name_of(&d, &director, "GB2"), "张三");
    // Its id is a number JSON readers keep exactly (below 2^53).
    assert!(r["import_id"].as_u64().is_some_and(|id| id < 1 << 53), "{r}");
    // The answer shows the first rows as read, to look at the names (OPERATIONS.md).
    assert_eq!(
        (
            &r["sample"][0]["person_id"],
            &r["sample"][0]["name"],
            &r["sample"][0]["line"]
        ),
        (&Value::from("GB2"), &Value::from("张三"), &Value::from(2)),
        "{r}"
    );

    // Excel's "Unicode text": UTF-16LE with a byte order mark, tab-separated.
    let text = "person_id\tname\tdepartment\tkind\tcard_no\r\nU1\t李四\t物理学院\tstaff\t62220000900003\r\n";
    let utf16: Vec<u8> = "\u{feff}"
        .encode_utf16()
        .chain(text.encode_utf16())
        .flat_map(u16::to_le_bytes)
        .collect();
    let (st, r) = post(&d, &director, "", &utf16);
    assert_eq!(
        (st, &r["encoding"], &r["delimiter"]),
        (200, &Value::from("UTF-16LE"), &Value::from("tab")),
        "{r}"
    );
    assert_eq!(name_of(&d, &director, "U1"), "李四");

    // CRLF: the duplicate card is on the line an editor shows, in its column.
    let crlf = "person_id,name,department,kind,card_no\r\n\
        C1,One,CS,student,62220000900011\r\n\
        \r\n\
        C2,Two,CS,student,62220000900011\r\n";
    let (st, r) = post(&d, &director, "?dry_run=true", crlf.as_bytes());
    assert_eq!(st, 422, "{r}");
    assert_eq!(r["errors"][0]["line"], 4, "{r}");
    assert_eq!(r["errors"][0]["column"], "card_no", "{r}");
    assert!(
        r["errors"][0]["message"].as_str().unwrap().contains("also on line 2"),
        "{r}"
    );

    // An encoding no rule can tell: one error that says how to fix it.
    let latin1 = b"person_id,name,department,kind,card_no\nW1,Jos\xe9,CS,staff,62220000900021\n";
    let (st, r) = post(&d, &director, "", latin1);
    assert_eq!((st, r["error_count"].as_u64()), (422, Some(1)), "{r}");
    assert!(r["errors"][0]["message"].as_str().unwrap().contains("charset="), "{r}");
    let (st, r) = post(&d, &director, "?charset=windows-1252", latin1);
    assert_eq!(st, 200, "{r}");
    assert_eq!(name_of(&d, &director, "W1"), "José");

    // A dry run is asked for as `true` (or `1`); any other value, or a misspelt
    // parameter, is refused before the file is read, never taken as "import for real".
    for query in ["?dry_run=yes", "?dry_run=TRUE", "?dryrun=true"] {
        let (st, r) = post(&d, &director, query, &gbk_file("GB9", 62_220_000_900_091));
        assert_eq!(st, 400, "{query}: {r}");
    }
    let (st, _) = d.api("GET", "/api/v1/persons/GB9", Some(&director), None);
    assert_eq!(st, 404, "a refused dry run imported nothing");

    // A charset the import does not know: refused before the file is read.
    let (st, r) = post(&d, &director, "?charset=klingon", &gbk_file("GB3", 62_220_000_900_031));
    assert_eq!(st, 422, "{r}");
    assert!(r["error"].as_str().unwrap().contains("charset"), "{r}");
    let (st, _) = d.api("GET", "/api/v1/persons/GB3", Some(&director), None);
    assert_eq!(st, 404);
}
