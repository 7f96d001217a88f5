//! The data admin's pages (数据管理员): the CSV batch import, dry run first; batch
//! grants (补助); the parameters per account kind.
//!
//! An import is always checked first: the file goes to the API as a dry run, the page
//! lists every bad row by line and column, and only a clean file can be imported. The
//! checked file waits in the session (`PendingImport`), so the file imported is byte
//! for byte the file checked.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use cardgate_domain::model::AccountKind;
use cardgate_domain::operator::Permission;
use maud::{Markup, html};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::sessions::{PendingImport, random_hex, same_secret};
use super::view::{Ctx, notice, page};
use super::{Answer, Console, Fields, Signed, UPLOAD_BYTES_MAX, csrf_refused, html_page};

/// A grants list typed or pasted into the form: a whole campus, one line each.
pub const GRANTS_FORM_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The charsets offered for a file without a byte order mark that is not UTF-8.
const CHARSETS: [(&str, &str, &str); 5] = [
    ("", "自动识别", "Detect"),
    (
        "gb18030",
        "GB18030 / GBK（中文 Excel 的 CSV）",
        "GB18030 / GBK (Chinese Excel's CSV)",
    ),
    ("utf-16le", "UTF-16LE", "UTF-16LE"),
    ("utf-16be", "UTF-16BE", "UTF-16BE"),
    ("big5", "Big5", "Big5"),
];

pub fn routes() -> Router<Console> {
    Router::new()
        .route(
            "/console/import",
            get(import_page)
                .post(import_check)
                .layer(DefaultBodyLimit::max(UPLOAD_BYTES_MAX)),
        )
        .route("/console/import/commit", post(import_commit))
        .route(
            "/console/grants",
            get(grants_page)
                .post(grants_post)
                .layer(DefaultBodyLimit::max(GRANTS_FORM_BYTES_MAX)),
        )
        .route("/console/params", get(params_page).post(params_post))
}

// ---- import -----------------------------------------------------------------------------

fn upload_form(ctx: &Ctx) -> Markup {
    html! {
        form.card #upload method="post" action="/console/import" enctype="multipart/form-data" {
            // First, so that the token is read before the file.
            (ctx.csrf_field())
            p { label { (ctx.t("CSV 文件", "CSV file")) " " input #file type="file" name="file" accept=".csv,.txt,text/csv" required; } }
            p { label { (ctx.t("编码", "Encoding")) " "
                select name="charset" {
                    @for (v, zh, en) in CHARSETS { option value=(v) { (ctx.t(zh, en)) } }
                }
            } }
            p { button #check type="submit" { (ctx.t("检查（不导入）", "Check (imports nothing)")) } }
        }
        p.muted { (ctx.t(
            "表头：person_id,name,department,kind,card_no。先检查，文件无误后才能导入。",
            "Header: person_id,name,department,kind,card_no. The file is checked first; only a clean file can be imported."
        )) }
    }
}

async fn import_page(State(c): State<Console>, signed: Signed) -> Response {
    if let Err(r) = c.allow(&signed, Permission::Import, "import.page", "imports").await {
        return r;
    }
    let ctx = signed.ctx();
    html_page(
        StatusCode::OK,
        page(&ctx, ctx.t("批量导入", "Batch import"), upload_form(&ctx)),
    )
}

fn import_uri(dry_run: bool, charset: Option<&str>) -> String {
    let mut uri = format!("/api/v1/imports?dry_run={dry_run}");
    if let Some(cs) = charset.filter(|c| !c.is_empty()) {
        uri.push_str("&charset=");
        uri.push_str(&super::view::urlencode(cs));
    }
    uri
}

fn report_facts(ctx: &Ctx, r: &Value) -> Markup {
    html! {
        dl.facts #report {
            dt { (ctx.t("行数", "Rows")) } dd #report-rows { (r["rows"]) }
            dt { (ctx.t("新增", "Added")) } dd { (r["added"]) }
            dt { (ctx.t("更新", "Updated")) } dd { (r["updated"]) }
            dt { (ctx.t("不变", "Unchanged")) } dd { (r["unchanged"]) }
            dt { (ctx.t("空行", "Empty rows")) } dd { (r["empty_rows"]) }
            dt { (ctx.t("编码", "Encoding")) } dd { (r["encoding"].as_str().unwrap_or("")) " — " span.muted { (r["encoding_reason"].as_str().unwrap_or("")) } }
            dt { (ctx.t("错误", "Errors")) } dd #report-errors { (r["error_count"]) }
        }
        // The first rows as read: a wrong encoding shows here as mojibake.
        @if let Some(rows) = r["sample"].as_array().filter(|rows| !rows.is_empty()) {
            table #report-sample {
                caption { (ctx.t("前几行（按读入的编码）", "The first rows, as read")) }
                tr {
                    th { (ctx.t("行", "Line")) } th { (ctx.t("学工号", "Person id")) } th { (ctx.t("姓名", "Name")) }
                    th { (ctx.t("部门", "Department")) } th { (ctx.t("类别", "Kind")) } th { (ctx.t("卡号", "Card")) }
                }
                @for row in rows {
                    tr {
                        td { (row["line"]) } td { (row["person_id"].as_str().unwrap_or("")) }
                        td { (row["name"].as_str().unwrap_or("")) } td { (row["department"].as_str().unwrap_or("")) }
                        td { (row["kind"].as_str().unwrap_or("")) } td { (row["card_no"].as_str().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

async fn import_check(State(c): State<Console>, signed: Signed, mut form: Multipart) -> Response {
    let ctx = signed.ctx();
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut file: Option<(String, Vec<u8>)> = None;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return c.refusal(&signed, e.status(), &e.body_text()),
        };
        let name = field.name().unwrap_or("").to_string();
        if name != "csrf" && !same_secret(fields.get("csrf").map_or("", String::as_str), &signed.session.csrf) {
            // The token comes first in the form; without it nothing else is read.
            return csrf_refused(&ctx);
        }
        if name == "file" {
            let file_name = field.file_name().unwrap_or("upload.csv").to_string();
            match field.bytes().await {
                Ok(b) => file = Some((file_name, b.to_vec())),
                Err(e) => return c.refusal(&signed, e.status(), &e.body_text()),
            }
        } else {
            match field.text().await {
                Ok(t) => {
                    fields.insert(name, t);
                }
                Err(e) => return c.refusal(&signed, e.status(), &e.body_text()),
            }
        }
    }
    if !same_secret(fields.get("csrf").map_or("", String::as_str), &signed.session.csrf) {
        return csrf_refused(&ctx);
    }
    let Some((file_name, bytes)) = file else {
        return c.refusal(
            &signed,
            StatusCode::BAD_REQUEST,
            ctx.t("没有选择文件。", "No file chosen."),
        );
    };
    let charset = fields.get("charset").cloned().filter(|s| !s.is_empty());
    let bytes: Arc<[u8]> = Arc::from(bytes);
    let a = c
        .call(
            &signed,
            Method::POST,
            &import_uri(true, charset.as_deref()),
            "text/csv",
            bytes.to_vec(),
            None,
        )
        .await;
    let r = a.json();
    if !a.ok() && r.get("error_count").is_none() {
        return c.refusal(&signed, a.status, &a.error());
    }
    let clean = r["error_count"].as_u64() == Some(0);
    let pending = clean.then(|| PendingImport {
        id: random_hex(),
        checked_ms: c.admin.ledger.now_ms(),
        file_name: file_name.clone(),
        charset: charset.clone(),
        bytes: bytes.clone(),
    });
    c.admin.console.set_pending_import(&signed.cookie, pending.clone());
    let errors = r["errors"].as_array().cloned().unwrap_or_default();
    let body = html! {
        p { (ctx.t("文件：", "File: ")) code { (file_name) } }
        (report_facts(&ctx, &r))
        @if clean {
            (notice("ok", ctx.t("文件无误，可以导入。", "The file is clean and can be imported.")))
            @if let Some(p) = &pending {
                form.card #commit method="post" action="/console/import/commit" {
                    (ctx.csrf_field())
                    input type="hidden" name="pending" value=(p.id);
                    input type="hidden" name="idem" value=(random_hex());
                    button.danger #import-button type="submit" { (ctx.t("确认导入", "Import now")) }
                }
            }
        } @else {
            (notice("error", ctx.t(
                "文件有错误，未导入任何内容。请修改后重新上传。",
                "The file has errors: nothing was imported. Correct it and upload it again."
            )))
            table #errors {
                tr { th.num { (ctx.t("行", "Line")) } th { (ctx.t("列", "Column")) } th { (ctx.t("原因", "Reason")) } }
                @for e in &errors {
                    tr {
                        td.num.line { (e["line"]) }
                        td.column { (e["column"].as_str().unwrap_or("—")) }
                        td { (e["message"].as_str().unwrap_or("")) }
                    }
                }
            }
            @if (errors.len() as u64) < r["error_count"].as_u64().unwrap_or(0) {
                p.muted { (ctx.t("只列出前 1000 个错误。", "The first 1,000 errors are listed.")) }
            }
            (upload_form(&ctx))
        }
    };
    let status = if clean {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    html_page(status, page(&ctx, ctx.t("导入检查", "Import check"), body))
}

async fn import_commit(State(c): State<Console>, signed: Signed, f: Fields) -> Response {
    let ctx = signed.ctx();
    let Some(p) = signed
        .session
        .pending_import
        .clone()
        .filter(|p| same_secret(&p.id, f.get("pending")))
    else {
        // The key below keeps a second send of this form from importing twice; without
        // the pending file there is nothing to import in the first place.
        return c.refusal(
            &signed,
            StatusCode::CONFLICT,
            ctx.t(
                "没有待导入的已检查文件（可能已经导入）。请重新上传并检查。",
                "No checked file is waiting (it may have been imported already). Upload and check it again.",
            ),
        );
    };
    let a = c
        .call(
            &signed,
            Method::POST,
            &import_uri(false, p.charset.as_deref()),
            "text/csv",
            p.bytes.to_vec(),
            Some(f.get("idem")),
        )
        .await;
    let r = a.json();
    if !a.ok() && r.get("error_count").is_none() {
        return c.refusal(&signed, a.status, &a.error());
    }
    if a.ok() {
        c.admin.console.set_pending_import(&signed.cookie, None);
    }
    let digest = hex::encode(&Sha256::digest(&p.bytes)[..8]);
    let body = html! {
        p { (ctx.t("文件：", "File: ")) code { (p.file_name) } " · sha256 " code { (digest) } }
        @if a.ok() {
            (notice("ok", ctx.t("已导入。", "Imported.")))
        } @else {
            (notice("error", ctx.t("导入被拒绝，未导入任何内容。", "The import was refused: nothing was imported.")))
        }
        (report_facts(&ctx, &r))
        p { a href="/console/import" { (ctx.t("再导入一个文件", "Import another file")) } }
    };
    html_page(a.status, page(&ctx, ctx.t("批量导入", "Batch import"), body))
}

// ---- grants -----------------------------------------------------------------------------

/// A grants list as typed: (person id, amount) pairs, and the lines not understood by
/// their number.
type GrantLines = (Vec<(String, String)>, Vec<(usize, String)>);

/// `person_id,amount` per line; blank lines skipped.
fn parse_grant_lines(text: &str) -> GrantLines {
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split([',', '\t', '，']).map(str::trim).collect();
        match parts.as_slice() {
            [id, amount] if !id.is_empty() && !amount.is_empty() => items.push((id.to_string(), amount.to_string())),
            _ => errors.push((i + 1, line.to_string())),
        }
    }
    (items, errors)
}

fn grants_form(ctx: &Ctx, batch: &str, lines: &str) -> Markup {
    html! {
        form.card #grants-form method="post" action="/console/grants" {
            (ctx.csrf_field())
            input type="hidden" name="step" value="review";
            p { label { (ctx.t("批次号", "Batch id")) " " input type="text" name="batch_id" value=(batch) placeholder="2025-06-meal-subsidy" required; } }
            p { (ctx.t("每行：学号/工号,金额（元）", "One per line: person id,amount (yuan)")) }
            textarea name="items" rows="10" { (lines) }
            p { button type="submit" { (ctx.t("下一步", "Next")) } }
        }
        p.muted { (ctx.t(
            "同一批次号无论提交几次只发放一次；中断后再次提交即可补完。",
            "A batch id is credited once however often it is sent; send it again to finish an interrupted one."
        )) }
    }
}

async fn grants_page(State(c): State<Console>, signed: Signed) -> Response {
    if let Err(r) = c.allow(&signed, Permission::Grants, "grant.page", "grants").await {
        return r;
    }
    let ctx = signed.ctx();
    html_page(
        StatusCode::OK,
        page(&ctx, ctx.t("补助发放", "Grants"), grants_form(&ctx, "", "")),
    )
}

async fn grants_post(State(c): State<Console>, signed: Signed, f: Fields) -> Response {
    let ctx = signed.ctx();
    let title = ctx.t("补助发放", "Grants");
    let (items, bad) = parse_grant_lines(f.get("items"));
    if f.get("step") != "confirm" {
        if let Err(r) = c.allow(&signed, Permission::Grants, "grant.page", "grants").await {
            return r;
        }
        let l = &c.admin.ledger;
        let unknown: Vec<&str> = items
            .iter()
            .filter(|(id, _)| l.person(id).is_none())
            .map(|(id, _)| id.as_str())
            .collect();
        let total: Option<rust_decimal::Decimal> = items.iter().try_fold(rust_decimal::Decimal::ZERO, |t, (_, a)| {
            let d: rust_decimal::Decimal = a.parse().ok()?;
            cardgate_domain::money::to_fen(d).map(|_| t + d)
        });
        let ok = bad.is_empty() && unknown.is_empty() && total.is_some() && !items.is_empty();
        let body = html! {
            @for (line, text) in &bad {
                (notice("error", &format!("{} {line}: {text}", ctx.t("第几行格式不对：", "Line not understood:"))))
            }
            @if !unknown.is_empty() {
                (notice("error", &format!("{} {}", ctx.t("没有这些人：", "Unknown person ids:"), unknown.join(", "))))
            }
            @if total.is_none() {
                (notice("error", ctx.t("有金额不是最多两位小数的元。", "An amount is not yuan with at most two decimals.")))
            }
            @if ok {
                dl.facts #review {
                    dt { (ctx.t("批次号", "Batch id")) } dd { (f.get("batch_id")) }
                    dt { (ctx.t("人数", "Persons")) } dd { (items.len()) }
                    dt { (ctx.t("合计（元）", "Total (yuan)")) } dd { (total.map(super::view::yuan).unwrap_or_default()) }
                }
                form.card #confirm method="post" action="/console/grants" {
                    (ctx.csrf_field())
                    input type="hidden" name="step" value="confirm";
                    input type="hidden" name="idem" value=(random_hex());
                    input type="hidden" name="batch_id" value=(f.get("batch_id"));
                    input type="hidden" name="items" value=(f.get("items"));
                    button.danger #confirm-button type="submit" { (ctx.t("确认发放", "Credit the grants")) }
                }
            }
            (grants_form(&ctx, f.get("batch_id"), f.get("items")))
        };
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        return html_page(status, page(&ctx, title, body));
    }
    let body = json!({
        "batch_id": f.get("batch_id"),
        "items": items.iter().map(|(id, a)| json!({ "person_id": id, "amount": a })).collect::<Vec<_>>(),
    });
    let a = c
        .post_json(&signed, Method::POST, "/api/v1/grants", &body, f.get("idem"))
        .await;
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    let r = a.json();
    let body = html! {
        (notice("ok", ctx.t("补助已发放。", "Grants credited.")))
        dl.facts #result {
            dt { (ctx.t("本次发放", "Credited now")) } dd { (r["report"]["applied"]) }
            dt { (ctx.t("此前已发放", "Done before")) } dd { (r["report"]["already_done"]) }
            dt { (ctx.t("跳过（账户已关闭）", "Skipped (account closed)")) } dd { (r["report"]["skipped"]) }
            dt { (ctx.t("合计（元）", "Total (yuan)")) } dd { (r["total"].as_str().unwrap_or("")) }
        }
    };
    html_page(StatusCode::OK, page(&ctx, title, body))
}

// ---- parameters ---------------------------------------------------------------------------

const PARAM_FIELDS: [(&str, &str, &str); 4] = [
    ("single_payment_max", "单笔限额", "Single payment max"),
    ("daily_max", "日限额", "Daily max"),
    ("replacement_fee", "补卡费", "Replacement fee"),
    ("temporary_card_fee", "临时卡费", "Temporary card fee"),
];

fn params_table(ctx: &Ctx, now: &Value, edit: bool, proposed: Option<&Value>) -> Markup {
    html! {
        table #params {
            tr {
                th { (ctx.t("账户类型", "Account kind")) }
                @for (_, zh, en) in PARAM_FIELDS { th { (ctx.t(zh, en)) " " (ctx.t("（元）", "(yuan)")) } }
            }
            @for kind in AccountKind::ALL {
                tr {
                    td { (ctx.lang.kind(kind.as_str())) }
                    @for (field, _, _) in PARAM_FIELDS {
                        @let cur = now[kind.as_str()][field].as_str().unwrap_or("");
                        @let name = format!("{}.{field}", kind.as_str());
                        td.num {
                            @if edit {
                                input type="text" name=(name) value=(cur) size="9" inputmode="decimal";
                            } @else if let Some(p) = proposed {
                                @let new = p[kind.as_str()][field].as_str().unwrap_or("");
                                @if new != cur { del { (cur) } " → " strong { (new) } } @else { (cur) }
                            } @else {
                                (cur)
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn params_page(State(c): State<Console>, signed: Signed) -> Response {
    let ctx = signed.ctx();
    let a = c.get(&signed, "/api/v1/params").await;
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    let body = html! {
        form.card method="post" action="/console/params" {
            (ctx.csrf_field())
            input type="hidden" name="step" value="review";
            (params_table(&ctx, &a.json(), true, None))
            button type="submit" { (ctx.t("下一步", "Next")) }
        }
        p.muted { (ctx.t("修改对所有终端的下一笔消费生效，并记入审计日志（修改前后）。", "A change applies to the next purchase on every terminal and is audited with before and after.")) }
    };
    html_page(StatusCode::OK, page(&ctx, ctx.t("参数设置", "Parameters"), body))
}

async fn params_post(State(c): State<Console>, signed: Signed, f: Fields) -> Response {
    let ctx = signed.ctx();
    let mut proposed = serde_json::Map::new();
    for kind in AccountKind::ALL {
        let mut k = serde_json::Map::new();
        for (field, _, _) in PARAM_FIELDS {
            k.insert(
                field.into(),
                Value::from(f.get(&format!("{}.{field}", kind.as_str())).trim()),
            );
        }
        proposed.insert(kind.as_str().into(), Value::Object(k));
    }
    let proposed = Value::Object(proposed);
    if f.get("step") != "confirm" {
        let a = c.get(&signed, "/api/v1/params").await;
        if !a.ok() {
            return c.refusal(&signed, a.status, &a.error());
        }
        let body = html! {
            (params_table(&ctx, &a.json(), false, Some(&proposed)))
            form.card #confirm method="post" action="/console/params" {
                (ctx.csrf_field())
                input type="hidden" name="step" value="confirm";
                input type="hidden" name="idem" value=(random_hex());
                @for kind in AccountKind::ALL {
                    @for (field, _, _) in PARAM_FIELDS {
                        @let name = format!("{}.{field}", kind.as_str());
                        input type="hidden" name=(name) value=(f.get(&name));
                    }
                }
                button.danger #confirm-button type="submit" { (ctx.t("确认修改", "Change the parameters")) }
            }
            p { a href="/console/params" { (ctx.t("取消", "Cancel")) } }
        };
        return html_page(StatusCode::OK, page(&ctx, ctx.t("参数设置", "Parameters"), body));
    }
    let a: Answer = c
        .post_json(&signed, Method::PUT, "/api/v1/params", &proposed, f.get("idem"))
        .await;
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    let body = html! {
        (notice("ok", ctx.t("参数已修改。", "Parameters changed.")))
        (params_table(&ctx, &a.json(), false, None))
    };
    html_page(StatusCode::OK, page(&ctx, ctx.t("参数设置", "Parameters"), body))
}
