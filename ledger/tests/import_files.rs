//! CSV imports as spreadsheets save them: line numbers whatever the line endings, the
//! encodings Chinese Excel writes, identifiers a spreadsheet or an input method
//! mangled, person ids that differ only by leading zeros (in an import and at the
//! desk), and every kind of error reported at once. Names and ids are invented.

mod common;

use cardgate_codec::CardNo;
use cardgate_domain::model::AccountKind;
use cardgate_domain::operator::{Actor, Role};
use cardgate_ledger::desk::{By, NewPerson};
use cardgate_ledger::import::ImportReport;
use cardgate_ledger::{Ledger, LedgerConfig, LedgerError, ManualClock};
use common::{Fixture, LUNCH_MS};

fn ledger() -> Fixture {
    Fixture::open(
        tempfile::tempdir().unwrap(),
        LedgerConfig::default(),
        ManualClock::new(LUNCH_MS),
    )
}

fn admin() -> Actor {
    Actor {
        operator_id: 2,
        name: "li".into(),
        role: Role::DataAdmin,
    }
}

async fn import(l: &Ledger, bytes: &[u8], charset: Option<&str>) -> ImportReport {
    l.import_csv_with_charset(&By::actor(&admin()), bytes, charset, false)
        .await
        .expect("the import answers with a report")
}

/// (line, column) of every error, in order.
fn places(r: &ImportReport) -> Vec<(u64, Option<&'static str>)> {
    r.errors.iter().map(|e| (e.line, e.column)).collect()
}

fn message(r: &ImportReport, line: u64) -> String {
    r.errors
        .iter()
        .filter(|e| e.line == line)
        .map(|e| e.message.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn utf16(text: &str, big_endian: bool, bom: bool) -> Vec<u8> {
    let units = if bom { "\u{feff}" } else { "" }
        .encode_utf16()
        .chain(text.encode_utf16());
    units
        .flat_map(|u| if big_endian { u.to_be_bytes() } else { u.to_le_bytes() })
        .collect()
}

fn legacy(encoding: &'static encoding_rs::Encoding, text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding.encode(text);
    assert!(!unmappable, "{text} is in {}", encoding.name());
    bytes.into_owned()
}

#[derive(Clone, Copy, Debug)]
enum Saved {
    Utf8,
    Utf8Bom,
    Utf16LeBom,
    Utf16BeBom,
    Gb18030,
}

impl Saved {
    fn bytes(self, text: &str) -> Vec<u8> {
        match self {
            Saved::Utf8 => text.as_bytes().to_vec(),
            Saved::Utf8Bom => [b"\xef\xbb\xbf".as_slice(), text.as_bytes()].concat(),
            Saved::Utf16LeBom => utf16(text, false, true),
            Saved::Utf16BeBom => utf16(text, true, true),
            Saved::Gb18030 => legacy(encoding_rs::GB18030, text),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Saved::Utf8 | Saved::Utf8Bom => "UTF-8",
            Saved::Utf16LeBom => "UTF-16LE",
            Saved::Utf16BeBom => "UTF-16BE",
            Saved::Gb18030 => "gb18030",
        }
    }
}

/// Each row is written as the editor lines it takes; `{B}` is a line break inside a
/// quoted value, `{D}` the delimiter. The numbers are the editor's lines.
const LOGICAL: [&str; 11] = [
    "person_id{D}name{D}department{D}kind{D}card_no",               // 1
    "L001{D}张三{D}计算机学院{D}student{D}62220000300001",          // 2
    "",                                                             // 3: blank
    "L002{D}\"Two{B}Lines\"{D}CS{D}student{D}62220000300002",       // 4-5
    "L003{D}Name Three{D}CS{D}alien{D}62220000300003",              // 6
    "{D}{D}{D}{D}",                                                 // 7: empty row
    "L001{D}Again{D}CS{D}student{D}62220000300008",                 // 8
    "L009{D}\"Nine\"{D}CS{D}student{D}\"62220000300002\"",          // 9
    "   ",                                                          // 10: spaces only
    "L011{D}\"Eleven{B}{B}Lines\"{D}CS{D}student{D}62220000300011", // 11-13
    "L014{D}Fourteen{D}CS{D}student{D}62220000300002",              // 14
];

#[tokio::test]
async fn line_numbers_are_the_editors_whatever_the_line_endings_encoding_and_delimiter() {
    let f = ledger();
    let l = &f.ledger;
    let expected = [
        (4, Some("name")),
        (6, Some("kind")),
        (8, Some("person_id")),
        (9, Some("card_no")),
        (11, Some("name")),
        (14, Some("card_no")),
    ];
    let mut cases = 0;
    for row_end in ["\n", "\r\n", "\r"] {
        for in_cell in ["\n", "\r\n", "\r"] {
            // No final line break; one; one and a blank line.
            for (ending, trailing_blank) in [("", 0), (row_end, 0), (&*format!("{row_end}{row_end}"), 1)] {
                for delimiter in [",", "\t"] {
                    for saved in [
                        Saved::Utf8,
                        Saved::Utf8Bom,
                        Saved::Utf16LeBom,
                        Saved::Utf16BeBom,
                        Saved::Gb18030,
                    ] {
                        let text = LOGICAL
                            .map(|l| l.replace("{D}", delimiter).replace("{B}", in_cell))
                            .join(row_end)
                            + ending;
                        let case = format!(
                            "rows end {row_end:?}, cells break {in_cell:?}, file ends {ending:?}, delimiter {delimiter:?}, {saved:?}"
                        );
                        let r = import(l, &saved.bytes(&text), None).await;
                        assert_eq!(places(&r), expected, "{case}: {:#?}", r.errors);
                        assert!(
                            message(&r, 4).contains("from line 4 to line 5"),
                            "{case}: {}",
                            message(&r, 4)
                        );
                        assert!(message(&r, 8).contains("also on line 2"), "{case}: {}", message(&r, 8));
                        assert!(message(&r, 9).contains("also on line 4"), "{case}: {}", message(&r, 9));
                        assert!(message(&r, 11).contains("from line 11 to line 13"), "{case}");
                        assert!(message(&r, 14).contains("also on line 4"), "{case}");
                        assert_eq!(r.rows, 7, "{case}");
                        assert_eq!(r.empty_rows, 3 + trailing_blank, "{case}");
                        assert_eq!(r.encoding, Some(saved.name()), "{case}");
                        assert_eq!(
                            r.delimiter,
                            Some(if delimiter == "," { "comma" } else { "tab" }),
                            "{case}"
                        );
                        assert!(!r.applied, "{case}");
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 3 * 3 * 3 * 2 * 5);
    assert!(l.person("L001").is_none() && l.card(CardNo(62_220_000_300_001)).is_none());
}

#[tokio::test]
async fn a_header_below_blank_lines_keeps_its_line_and_an_empty_file_is_named() {
    let f = ledger();
    let l = &f.ledger;
    let text = "\r\n\r\nperson_id,name,department,kind,card_no\r\nP1,Name,CS,alien,62220000300001\r\n";
    let r = import(l, text.as_bytes(), None).await;
    assert_eq!(places(&r), [(4, Some("kind"))]);
    assert_eq!((r.rows, r.empty_rows), (1, 2));
    for empty in ["", "\r\n\r\n", ",,,,\n"] {
        let r = import(l, empty.as_bytes(), None).await;
        assert_eq!(places(&r), [(1, None)], "{empty:?}");
        assert!(r.errors[0].message.contains("empty"), "{:?}", r.errors);
    }
}

#[tokio::test]
async fn every_encoding_excel_saves_is_read_and_the_names_come_out_right() {
    let f = ledger();
    let l = &f.ledger;
    let csv = |n: u32, d: &str| {
        format!(
            "person_id{d}name{d}department{d}kind{d}card_no\r\nE{n}{d}张三{d}计算机学院{d}student{d}6222000070000{n}\r\n"
        )
    };
    // (case, file, charset given, encoding read, why)
    type Case = (u32, Vec<u8>, Option<&'static str>, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        (1, csv(1, ",").into_bytes(), None, "UTF-8", "valid UTF-8"),
        (2, Saved::Utf8Bom.bytes(&csv(2, ",")), None, "UTF-8", "byte order mark"),
        // Chinese Excel's "CSV": GB18030 (GBK), detected.
        (
            3,
            legacy(encoding_rs::GB18030, &csv(3, ",")),
            None,
            "gb18030",
            "GB18030",
        ),
        (
            4,
            legacy(encoding_rs::GBK, &csv(4, ",")),
            Some("gb18030"),
            "gb18030",
            "charset=gb18030",
        ),
        (
            5,
            legacy(encoding_rs::GBK, &csv(5, ",")),
            Some("GBK"),
            "GBK",
            "charset=GBK",
        ),
        // Excel's "Unicode text": UTF-16LE with a byte order mark, tab-separated.
        (
            6,
            utf16(&csv(6, "\t"), false, true),
            None,
            "UTF-16LE",
            "byte order mark",
        ),
        (7, utf16(&csv(7, ","), true, true), None, "UTF-16BE", "byte order mark"),
        (
            8,
            utf16(&csv(8, "\t"), false, false),
            Some("utf-16le"),
            "UTF-16LE",
            "charset=UTF-16LE",
        ),
        (
            9,
            utf16(&csv(9, ","), true, false),
            Some("utf-16be"),
            "UTF-16BE",
            "charset=UTF-16BE",
        ),
        // A byte order mark outranks the charset given.
        (
            10,
            utf16(&csv(10, "\t"), false, true),
            Some("gb18030"),
            "UTF-16LE",
            "charset=gb18030 was given, and not used",
        ),
        // A charset does not outrank valid UTF-8: GBK text is almost never valid UTF-8.
        (11, csv(11, ",").into_bytes(), Some("gb18030"), "UTF-8", "and not used"),
    ];
    for (n, bytes, charset, encoding, reason) in cases {
        let r = import(l, &bytes, charset).await;
        assert!(r.applied && r.error_count == 0, "case {n}: {:?}", r.errors);
        assert_eq!(r.encoding, Some(encoding), "case {n}");
        let why = r.encoding_reason.clone().unwrap_or_default();
        assert!(why.contains(reason), "case {n}: {why}");
        let p = l.person(&format!("E{n}")).unwrap_or_else(|| panic!("case {n}"));
        assert_eq!(
            (p.name.as_str(), p.department.as_str()),
            ("张三", "计算机学院"),
            "case {n}"
        );
        let card = CardNo(format!("6222000070000{n}").parse().unwrap());
        assert_eq!(l.card(card).map(|c| c.account), Some(p.account), "case {n}");
    }

    // Big5 reads cleanly as GB18030 (into other characters): it needs its charset.
    let big5 = legacy(
        encoding_rs::BIG5,
        "person_id,name,department,kind,card_no\nB1,張三,資訊學院,staff,62220000800001\n",
    );
    let r = import(l, &big5, Some("big5")).await;
    assert!(r.applied, "{:?}", r.errors);
    assert_eq!(l.person("B1").unwrap().name, "張三");
    // Latin-1 with a charset; without one it is neither UTF-8 nor GB18030.
    let latin1 = b"person_id,name,department,kind,card_no\nW1,Jos\xe9,CS,staff,62220000800002\n";
    let r = import(l, latin1, None).await;
    assert_eq!((r.error_count, r.encoding, r.rows), (1, None, 0));
    assert_eq!(places(&r), [(2, None)]);
    let m = &r.errors[0].message;
    assert!(
        m.contains("not UTF-8") && m.contains("CSV UTF-8") && m.contains("charset="),
        "{m}"
    );
    assert!(l.person("W1").is_none());
    let r = import(l, latin1, Some("windows-1252")).await;
    assert!(r.applied, "{:?}", r.errors);
    assert_eq!(l.person("W1").unwrap().name, "José");

    // UTF-16 without a byte order mark or a charset: one error, with the charset to give.
    let r = import(l, &utf16(&csv(12, "\t"), false, false), None).await;
    assert_eq!(places(&r), [(1, None)]);
    assert!(r.errors[0].message.contains("charset=utf-16le"), "{:?}", r.errors);
    let r = import(l, &utf16(&csv(12, "\t"), true, false), None).await;
    assert!(r.errors[0].message.contains("charset=utf-16be"), "{:?}", r.errors);
    // A file that breaks the charset given, on its third line.
    let gbk = legacy(
        encoding_rs::GBK,
        &format!("{}E13,李四,CS,student,62220000700013\n", csv(12, ",")),
    );
    let r = import(l, &gbk, Some("utf-8")).await;
    assert_eq!(places(&r), [(2, None)], "{:?}", r.errors);
    assert!(r.errors[0].message.contains("charset=UTF-8"), "{:?}", r.errors);
    // A byte order mark on a file that is not what it says: UTF-16 cut in half.
    let mut odd = utf16(&csv(12, ","), false, true);
    odd.push(b'x');
    let r = import(l, &odd, None).await;
    assert_eq!(r.error_count, 1, "{:?}", r.errors);
    assert!(r.errors[0].message.contains("byte order mark"), "{:?}", r.errors);
    assert!(l.person("E12").is_none() && l.person("E13").is_none());

    // A charset no one can read names with is refused before anything is read.
    for label in ["klingon", "replacement", "x-user-defined"] {
        let e = l
            .import_csv_with_charset(&By::actor(&admin()), csv(14, ",").as_bytes(), Some(label), false)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, LedgerError::Invalid(m) if m.contains("charset")),
            "{label}: {e}"
        );
    }
}

#[tokio::test]
async fn identifiers_a_spreadsheet_mangled_are_named_and_full_width_ones_normalised() {
    let f = ledger();
    let l = &f.ledger;
    let good = [
        // Full-width digits and ideographic spaces around a name (kept as written
        // inside, trimmed outside); an ID typed in full-width mode; no-break spaces.
        "２０２４００１２３４,\u{3000}张三\u{3000},计算机学院,Student,６２２２００００４００００１",
        "\u{a0}2024007\u{a0},Ｌｉ\u{3000}Ｓｉ,CS,staff,62220000400007\u{3000}",
        "Ｔ００４２,\u{200b}Wang Wu ,Physics,temporary,\u{feff}62220000400042",
    ];
    let bad = [
        "4.40E+17,李四,CS,student,62220000400002",        // 3
        "2024005,王五,CS,student,6.22E+15",               // 4
        "2024\u{3000}006,赵六,CS,student,62220000400006", // 5
        "2024008,X,CS,student,\"62,220,000,400,008\"",    // 6
        "2024009,Y,CS,student,62220000400009.0",          // 7
        "2024010,Z,CS,student,６２２２ａ",                // 8
        ",W,CS,,",                                        // 9
    ];
    let header = "person_id,name,department,kind,card_no";
    let file = [&[header, good[0]][..], &bad[..], &good[1..]].concat().join("\r\n");
    let r = import(l, file.as_bytes(), None).await;
    assert_eq!(
        places(&r),
        [
            (3, Some("person_id")),
            (4, Some("card_no")),
            (5, Some("person_id")),
            (6, Some("card_no")),
            (7, Some("card_no")),
            (8, Some("card_no")),
            (9, Some("person_id")),
            (9, Some("kind")),
            (9, Some("card_no")),
        ],
        "{:#?}",
        r.errors
    );
    assert!(
        message(&r, 3)
            .starts_with("person_id \"4.40E+17\": the spreadsheet turned this number into scientific notation")
    );
    assert!(message(&r, 3).contains("format the column as text"));
    assert!(message(&r, 4).contains("scientific notation"), "{}", message(&r, 4));
    assert!(message(&r, 5).contains("a space"), "{}", message(&r, 5));
    assert!(message(&r, 6).contains("thousands separators"), "{}", message(&r, 6));
    assert!(message(&r, 7).contains("decimal"), "{}", message(&r, 7));
    assert!(message(&r, 8).contains("'a' (U+0061)"), "{}", message(&r, 8));
    assert_eq!(
        message(&r, 9),
        "person_id is empty | kind is empty: one of student, staff, temporary | card_no is empty"
    );
    assert!(l.person("2024001234").is_none(), "nothing of a file with a bad row");

    let file = [&[header][..], &good[..]].concat().join("\r\n");
    let r = import(l, file.as_bytes(), None).await;
    assert!(r.applied && r.added == 3, "{:?}", r.errors);
    let p = l.person("2024001234").expect("stored in ASCII");
    assert_eq!(p.name, "张三");
    assert_eq!(l.account(p.account).unwrap().kind, AccountKind::Student);
    assert_eq!(l.card(CardNo(62_220_000_400_001)).unwrap().account, p.account);
    assert_eq!(
        l.person("2024007").unwrap().name,
        "Ｌｉ\u{3000}Ｓｉ",
        "names kept as written"
    );
    assert_eq!(l.person("T0042").unwrap().name, "\u{200b}Wang Wu");
    assert!(l.card(CardNo(62_220_000_400_042)).is_some());
    // The same file in ASCII is the same file: nothing changes.
    let ascii = "person_id,name,department,kind,card_no\n2024001234,张三,计算机学院,student,62220000400001\n";
    let r = import(l, ascii.as_bytes(), None).await;
    assert_eq!((r.added, r.updated, r.unchanged), (0, 0, 1), "{:?}", r.errors);
}

async fn open(l: &Ledger, id: &str) -> Result<u64, LedgerError> {
    let desk = Actor {
        operator_id: 7,
        name: "wang".into(),
        role: Role::CardDesk,
    };
    let p = NewPerson {
        id: id.into(),
        name: format!("Person {id}"),
        department: "CS".into(),
        kind: AccountKind::Student,
    };
    Ok(l.open_person(&By::actor(&desk), p).await?.1.id)
}

async fn open_with_card(l: &Ledger, id: &str, card: u64) {
    let desk = Actor {
        operator_id: 7,
        name: "wang".into(),
        role: Role::CardDesk,
    };
    let account = open(l, id).await.unwrap();
    l.issue_card_desk(&By::actor(&desk), account, CardNo(card), None, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_desk_refuses_a_person_id_that_differs_only_by_leading_zeros() {
    let f = ledger();
    let l = &f.ledger;
    open(l, "99000300").await.unwrap();
    for twin in ["0099000300", "099000300", "00000000000000000000000099000300"] {
        let e = open(l, twin).await.unwrap_err().to_string();
        assert!(
            e.contains("person 99000300 already exists") && e.contains("leading zeros"),
            "{twin}: {e}"
        );
        assert!(l.person(twin).is_none());
    }
    open(l, "0077").await.unwrap();
    for twin in ["77", "077", "00077"] {
        let e = open(l, twin).await.unwrap_err().to_string();
        assert!(e.contains("person 0077 already exists"), "{twin}: {e}");
    }
    open(l, "0").await.unwrap();
    assert!(open(l, "00").await.unwrap_err().to_string().contains("person 0 "));
    // Zeros elsewhere make another id.
    open(l, "990003000").await.unwrap();
    open(l, "770").await.unwrap();
    assert!(
        open(l, "99000300")
            .await
            .unwrap_err()
            .to_string()
            .contains("already exists")
    );
}

#[tokio::test]
async fn every_kind_of_error_is_reported_at_once_and_nothing_imported() {
    let f = ledger();
    let l = &f.ledger;
    open_with_card(l, "99000300", 62_220_000_500_001).await;
    open_with_card(l, "0077", 62_220_000_500_002).await;
    let file = "person_id,name,department,kind,card_no,phone\n\
        P1,Name,CS,wizard,62220000500002,123\n\
        0099000300,Zero,CS,student,62220000500003,\n\
        77,Seven,CS,student,62220000500004,\n\
        0055,A,CS,student,62220000500005,\n\
        55,B,CS,student,62220000500006,\n\
        99000300,Renamed,CS,student,62220000500099,\n\
        P8,Fine,CS,student,62220000500008,\n";
    let r = import(l, file.as_bytes(), None).await;
    assert_eq!(
        places(&r),
        [
            (1, None),
            (2, Some("kind")),
            (2, Some("card_no")),
            (3, Some("person_id")),
            (4, Some("person_id")),
            (6, Some("person_id")),
            (7, Some("person_id")),
            (7, Some("card_no")),
        ],
        "{:#?}",
        r.errors
    );
    assert!(message(&r, 1).contains("unknown column \"phone\""));
    assert!(message(&r, 2).contains("wizard") && message(&r, 2).contains("belongs to account"));
    let m = message(&r, 3);
    assert!(
        m.contains("0099000300") && m.contains("existing person 99000300") && m.contains("leading zeros"),
        "{m}"
    );
    assert!(message(&r, 4).contains("existing person 0077"), "{}", message(&r, 4));
    assert!(message(&r, 6).contains("person 55 differs from 0055 on line 5 only by leading zeros"));
    // Line 7 is a known person, but its id is line 3's without the zeros.
    assert!(message(&r, 7).contains("person 99000300 differs from 0099000300 on line 3"));
    assert!(message(&r, 7).contains("desk operation"));
    assert!(!r.applied);
    assert_eq!(r.added, 2, "the counts say what the rows without errors would do");
    for id in ["P1", "0055", "55", "P8", "0099000300", "77"] {
        assert!(l.person(id).is_none(), "{id}");
    }
    assert_eq!(l.person("99000300").unwrap().name, "Person 99000300");
    // The JSON shape: {line, column, message}, column null when about no one value.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["errors"][0]["line"], 1);
    assert!(json["errors"][0]["column"].is_null());
    assert_eq!(json["errors"][1]["column"], "kind");
    assert_eq!(json["encoding"], "UTF-8");
    assert_eq!(json["delimiter"], "comma");
}

#[tokio::test]
async fn headers_and_rows_of_the_wrong_shape_are_named() {
    let f = ledger();
    let l = &f.ledger;
    // No header: one error, not one per value.
    let r = import(l, "2024001,张三,CS,student,62220000600001\n".as_bytes(), None).await;
    assert_eq!(places(&r), [(1, None)]);
    assert!(r.errors[0].message.contains("must be the header"), "{:?}", r.errors);
    let r = import(
        l,
        "person_id;name;department;kind;card_no\nP;N;CS;student;62220000600001\n".as_bytes(),
        None,
    )
    .await;
    assert_eq!(places(&r), [(1, None)]);
    assert!(r.errors[0].message.contains("semicolons"), "{:?}", r.errors);
    // A repeated column, a nameless one, a missing one; the rows are checked all the same.
    let r = import(
        l,
        "person_id,name,name,kind,card_no,\nP1,a,b,alien,62220000600001,\n".as_bytes(),
        None,
    )
    .await;
    assert_eq!(
        places(&r),
        [(1, Some("name")), (1, None), (1, Some("department")), (2, Some("kind"))],
        "{:#?}",
        r.errors
    );
    assert!(message(&r, 1).contains("twice") && message(&r, 1).contains("column 6 of the header has no name"));
    // An unquoted comma, an unclosed quote.
    let file = "person_id,name,department,kind,card_no\n\
        P1,Zhang, San,CS,student,62220000600001\n\
        P2,\"Li,CS,student,62220000600002\n\
        P3,Wang,CS,student,62220000600003\n";
    let r = import(l, file.as_bytes(), None).await;
    assert_eq!(places(&r), [(2, None), (3, None)], "{:#?}", r.errors);
    assert!(message(&r, 2).contains("the row has 6 values, the header 5") && message(&r, 2).contains("double quotes"));
    assert!(
        message(&r, 3).contains("from line 3") && message(&r, 3).contains("not closed"),
        "{}",
        message(&r, 3)
    );
    assert!(l.person("P1").is_none());
}
