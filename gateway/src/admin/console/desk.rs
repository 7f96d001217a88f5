//! The card desk window (卡务窗口): find a person, see their account and cards, act on
//! a card or on the money, and read consumption details and the daily fee list.
//!
//! Every action is two steps: a review page that says what will happen (the status a
//! card goes to, the amount, the balance it leaves), then the confirmed API call, whose
//! answer is shown (the new balance, the tx id, the blacklist version).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use cardgate_domain::entry::CardAction;
use cardgate_domain::model::{Account, Card, Person};
use cardgate_domain::money::from_fen;
use cardgate_domain::operator::Permission;
use cardgate_domain::rules::card::transition;
use maud::{Markup, html};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::sessions::random_hex;
use super::view::{Ctx, local_time, notice, page, urlencode, yuan};
use super::{Console, Fields, Signed, html_page};

/// Names found by one search, at most.
const SEARCH_RESULTS_MAX: usize = 50;

pub fn routes() -> Router<Console> {
    Router::new()
        .route("/console/desk", get(search))
        .route("/console/desk/account/{id}", get(account_page))
        .route("/console/desk/card/{no}/{action}", get(card_review).post(card_post))
        .route("/console/desk/account/{id}/money/{op}", axum::routing::post(money_post))
        .route("/console/history", get(history_page))
        .route("/console/history.csv", get(history_csv))
        .route("/console/fees", get(fees_page))
        .route("/console/fees.csv", get(fees_csv))
}

fn status_cell(ctx: &Ctx, s: &str) -> Markup {
    html! { span class=(format!("status-{s}")) { (ctx.lang.status(s)) } }
}

/// A card action by its path name, with its texts.
fn card_action(name: &str) -> Option<(CardAction, &'static str, &'static str)> {
    Some(match name {
        "lost" => (CardAction::Lost, "挂失", "Report lost"),
        "unfreeze" => (CardAction::Unfreeze, "解挂", "Unfreeze"),
        "freeze" => (CardAction::Freeze, "冻结", "Freeze"),
        "bad" => (CardAction::Bad, "坏卡登记", "Record as bad"),
        "replace" => (CardAction::Replace, "补卡", "Replace"),
        "cancel" => (CardAction::Cancel, "注销", "Cancel"),
        _ => return None,
    })
}

const CARD_ACTIONS: [&str; 6] = ["lost", "unfreeze", "freeze", "bad", "replace", "cancel"];

fn parse_card(s: &str) -> Option<cardgate_codec::CardNo> {
    cardgate_domain::rules::input::parse_card_no(s).ok()
}

// ---- search and the account ----------------------------------------------------------------

async fn search(State(c): State<Console>, signed: Signed, Query(q): Query<HashMap<String, String>>) -> Response {
    let text = q.get("q").map_or("", |s| s.trim()).to_string();
    if let Err(r) = c
        .allow(&signed, Permission::Persons, "person.find", &format!("find:{text}"))
        .await
    {
        return r;
    }
    let l = &c.admin.ledger;
    let ctx = signed.ctx();
    // A card number or a person id finds one account: go straight to it.
    if let Some(card) = parse_card(&text).and_then(|no| l.card(no)) {
        return Redirect::to(&format!("/console/desk/account/{}", card.account)).into_response();
    }
    if let Some(p) = l.person(&text) {
        return Redirect::to(&format!("/console/desk/account/{}", p.account)).into_response();
    }
    let found = if text.is_empty() {
        Vec::new()
    } else {
        l.find_persons(&text, SEARCH_RESULTS_MAX)
    };
    html_page(
        StatusCode::OK,
        page(
            &ctx,
            ctx.t("卡务窗口", "Card desk"),
            html! {
                form #search method="get" action="/console/desk" {
                    label { (ctx.t("姓名、学号/工号或卡号", "Name, person id or card number")) " "
                        input #q type="text" name="q" value=(text) autofocus; }
                    button type="submit" { (ctx.t("查找", "Find")) }
                }
                @if !text.is_empty() {
                    @if found.is_empty() {
                        (notice("warn", ctx.t("没有找到。", "Nobody found.")))
                    } @else {
                        table #results {
                            tr { th { (ctx.t("学号/工号", "Person id")) } th { (ctx.t("姓名", "Name")) } th { (ctx.t("部门", "Department")) } th { (ctx.t("账户", "Account")) } }
                            @for p in &found {
                                tr {
                                    td { a href=(format!("/console/desk/account/{}", p.account)) { (p.id) } }
                                    td { (p.name) } td { (p.department) } td.num { (p.account) }
                                }
                            }
                        }
                        @if found.len() == SEARCH_RESULTS_MAX {
                            p.muted { (ctx.t("只显示前 50 个；请输入更完整的姓名。", "The first 50 only; type more of the name.")) }
                        }
                    }
                }
            },
        ),
    )
}

/// Facts about an account as the desk reads them.
struct AccountView {
    account: Account,
    person: Option<Person>,
    cards: Vec<Card>,
    spent_today: Decimal,
    single_max: Decimal,
    daily_max: Decimal,
}

fn account_view(c: &Console, id: u64) -> Option<AccountView> {
    let l = &c.admin.ledger;
    let account = l.account(id)?;
    let limits = account.effective_limits(&l.params());
    Some(AccountView {
        spent_today: if account.day == l.today() {
            account.spent_today
        } else {
            Decimal::ZERO
        },
        single_max: limits.single_payment_max,
        daily_max: limits.daily_max,
        person: l.person_of_account(id),
        cards: l.cards_of(id),
        account,
    })
}

fn account_facts(ctx: &Ctx, v: &AccountView) -> Markup {
    html! {
        dl.facts #account {
            @if let Some(p) = &v.person {
                dt { (ctx.t("姓名", "Name")) } dd #person-name { (p.name) }
                dt { (ctx.t("学号/工号", "Person id")) } dd { (p.id) }
                dt { (ctx.t("部门", "Department")) } dd { (p.department) }
            }
            dt { (ctx.t("账户", "Account")) } dd { (v.account.id) " · " (ctx.lang.kind(v.account.kind.as_str())) }
            dt { (ctx.t("账户状态", "Account status")) } dd { (status_cell(ctx, v.account.status.as_str())) }
            dt { (ctx.t("余额（元）", "Balance (yuan)")) } dd #balance { (yuan(v.account.balance)) }
            dt { (ctx.t("今日消费（元）", "Spent today (yuan)")) } dd #spent-today { (yuan(v.spent_today)) }
            dt { (ctx.t("单笔限额 / 日限额", "Single / daily limit")) } dd { (yuan(v.single_max)) " / " (yuan(v.daily_max)) }
        }
    }
}

async fn account_page(State(c): State<Console>, signed: Signed, Path(id): Path<String>) -> Response {
    let target = format!("account:{id}");
    if let Err(r) = c.allow(&signed, Permission::Persons, "account.get", &target).await {
        return r;
    }
    let ctx = signed.ctx();
    let Some(v) = id.parse().ok().and_then(|id| account_view(&c, id)) else {
        return c.refusal(
            &signed,
            StatusCode::NOT_FOUND,
            &format!("{} {id}", ctx.t("没有此账户：", "No such account:")),
        );
    };
    let tz = c.tz();
    let all_params = c.admin.ledger.params();
    let params = all_params.for_kind(v.account.kind);
    let open = v.account.status.as_str() != "closed";
    let body = html! {
        (account_facts(&ctx, &v))
        h2 { (ctx.t("卡片", "Cards")) }
        table #cards {
            tr { th { (ctx.t("卡号", "Card number")) } th { (ctx.t("状态", "Status")) } th { (ctx.t("发卡时间", "Issued")) } th { (ctx.t("有效期至", "Expires")) } th { (ctx.t("操作", "Actions")) } }
            @for card in &v.cards {
                tr data-card=(card.no.0) {
                    td.mono { (card.no.0) }
                    td.card-status { (status_cell(&ctx, card.status.as_str())) }
                    td { (local_time(card.issued_ms, tz)) }
                    td { @match card.expires_ms { Some(ms) => (local_time(ms, tz)), None => "—" } }
                    td.actions {
                        @if ctx.may(Permission::Cards) {
                            @for name in CARD_ACTIONS {
                                @if let Some((act, zh, en)) = card_action(name) {
                                    @if transition(card.status, act).is_ok() {
                                        a.button id=(format!("{name}-{}", card.no.0)) href=(format!("/console/desk/card/{}/{name}", card.no.0)) { (ctx.t(zh, en)) }
                                        " "
                                    }
                                }
                            }
                        }
                        @if ctx.may(Permission::History) {
                            a href=(format!("/console/history?card={}", card.no.0)) { (ctx.t("消费明细", "Transactions")) }
                        }
                    }
                }
            }
        }
        @if ctx.may(Permission::Money) && open {
            h2 { (ctx.t("资金", "Money")) }
            div.actions {
                form.card #topup method="post" action=(format!("/console/desk/account/{}/money/topup", v.account.id)) {
                    (ctx.csrf_field())
                    input type="hidden" name="step" value="review";
                    strong { (ctx.t("充值", "Top up")) } " "
                    label { (ctx.t("金额（元）", "Amount (yuan)")) " " input #topup-amount type="text" name="amount" inputmode="decimal" size="8" required; }
                    button type="submit" { (ctx.t("下一步", "Next")) }
                }
                form.card #refund method="post" action=(format!("/console/desk/account/{}/money/refund", v.account.id)) {
                    (ctx.csrf_field())
                    input type="hidden" name="step" value="review";
                    strong { (ctx.t("退款", "Refund")) } " "
                    label { (ctx.t("金额（元）", "Amount (yuan)")) " " input type="text" name="amount" inputmode="decimal" size="8" required; }
                    label { (ctx.t("原因", "Reason")) " " input type="text" name="reason" size="24"; }
                    button type="submit" { (ctx.t("下一步", "Next")) }
                }
                form.card #fee method="post" action=(format!("/console/desk/account/{}/money/fee", v.account.id)) {
                    (ctx.csrf_field())
                    input type="hidden" name="step" value="review";
                    strong { (ctx.t("收费", "Fee")) } " "
                    select name="fee" {
                        option value="replacement" { (ctx.t("补卡费", "Replacement")) " " (yuan(params.replacement_fee)) }
                        option value="temporary_card" { (ctx.t("临时卡费", "Temporary card")) " " (yuan(params.temporary_card_fee)) }
                    }
                    select name="method" {
                        option value="cash" { (ctx.t("现金", "Cash")) }
                        option value="balance" { (ctx.t("从余额扣", "From balance")) }
                    }
                    button type="submit" { (ctx.t("下一步", "Next")) }
                }
            }
        }
        @if ctx.may(Permission::History) {
            p { a #account-history href=(format!("/console/history?account={}", v.account.id)) { (ctx.t("本账户消费明细", "This account's transactions")) } }
        }
    };
    let title = match &v.person {
        Some(p) => format!("{} · {}", p.name, p.id),
        None => format!("{} {}", ctx.t("账户", "Account"), v.account.id),
    };
    html_page(StatusCode::OK, page(&ctx, &title, body))
}

// ---- card actions ---------------------------------------------------------------------------

fn fee_choice(ctx: &Ctx, selected: &str) -> Markup {
    html! {
        select name="fee" {
            option value="" selected[selected.is_empty()] { (ctx.t("不收费", "No fee")) }
            option value="cash" selected[selected == "cash"] { (ctx.t("现金", "Cash")) }
            option value="balance" selected[selected == "balance"] { (ctx.t("从余额扣", "From balance")) }
        }
    }
}

/// The review of a card action: what it does, and the form that confirms it.
async fn card_review_page(c: &Console, signed: &Signed, no: &str, name: &str, f: Option<&Fields>) -> Response {
    let ctx = signed.ctx();
    let Some((act, zh, en)) = card_action(name) else {
        return c.refusal(signed, StatusCode::NOT_FOUND, "no such card action");
    };
    let l = &c.admin.ledger;
    let Some(card) = parse_card(no).and_then(|n| l.card(n)) else {
        return c.refusal(
            signed,
            StatusCode::NOT_FOUND,
            &format!("{} {no}", ctx.t("没有此卡：", "No such card:")),
        );
    };
    let Some(v) = account_view(c, card.account) else {
        return c.refusal(signed, StatusCode::NOT_FOUND, "no account");
    };
    let after = transition(card.status, act);
    let replacement_fee = l.params().for_kind(v.account.kind).replacement_fee;
    let new_no = f.map_or("", |f| f.get("new_card_no"));
    let fee = f.map_or("", |f| f.get("fee"));
    // A replacement first asks for the new card; the review follows.
    let asking = act == CardAction::Replace && f.is_none();
    let what = match act {
        CardAction::Lost => ctx.t(
            "挂失后，此卡在所有终端上的消费都会被拒绝。",
            "Once reported lost, every purchase with this card is declined on every terminal.",
        ),
        CardAction::Unfreeze => ctx.t("解挂后，此卡恢复可用。", "Once unfrozen, the card can pay again."),
        CardAction::Freeze => ctx.t("冻结后，此卡不能消费。", "Once frozen, the card cannot pay."),
        CardAction::Bad => ctx.t(
            "登记为坏卡后，此卡不能再使用；余额保留在账户中，可补卡。",
            "Recorded as bad, the card cannot be used again; the balance stays with the account for a replacement.",
        ),
        CardAction::Replace => ctx.t(
            "补卡后，旧卡作废，新卡使用同一账户，余额不变（扣除从余额支付的补卡费）。",
            "The old card is refused, the new one works on the same account with the same balance (less a fee paid from it).",
        ),
        CardAction::Cancel => ctx.t(
            "注销后，此账户的所有卡都作废，账户关闭，余额以现金退还。",
            "Every card of the account is refused, the account is closed, and the balance is paid out in cash.",
        ),
        CardAction::Issue => "",
    };
    let body = html! {
        (account_facts(&ctx, &v))
        dl.facts {
            dt { (ctx.t("卡号", "Card number")) } dd.mono { (card.no.0) }
            dt { (ctx.t("当前状态", "Status now")) } dd { (status_cell(&ctx, card.status.as_str())) }
            @if let Ok(to) = after {
                dt { (ctx.t("操作后", "After")) } dd { (status_cell(&ctx, to.as_str())) }
            }
        }
        @match after {
            Err(e) => (notice("error", &e.0)),
            Ok(_) => {
                p { (what) }
                @if act == CardAction::Cancel {
                    (notice("warn", &format!("{} {}", ctx.t("退还现金（元）：", "Cash paid out (yuan):"), yuan(v.account.balance))))
                }
                form.card #confirm method="post" action=(format!("/console/desk/card/{}/{name}", card.no.0)) {
                    (ctx.csrf_field())
                    @if act == CardAction::Replace {
                        @if asking {
                            input type="hidden" name="step" value="review";
                            p { label { (ctx.t("新卡号", "New card number")) " " input #new-card-no type="text" name="new_card_no" required; } }
                            p { label { (ctx.t("补卡费", "Replacement fee")) " " (yuan(replacement_fee)) " " (fee_choice(&ctx, "")) } }
                            button type="submit" { (ctx.t("下一步", "Next")) }
                        } @else {
                            input type="hidden" name="step" value="confirm";
                            input type="hidden" name="idem" value=(random_hex());
                            input type="hidden" name="new_card_no" value=(new_no);
                            input type="hidden" name="fee" value=(fee);
                            dl.facts {
                                dt { (ctx.t("新卡号", "New card number")) } dd.mono { (new_no) }
                                dt { (ctx.t("补卡费", "Replacement fee")) }
                                dd { @match fee {
                                    "cash" => { (yuan(replacement_fee)) " · " (ctx.t("现金", "cash")) },
                                    "balance" => { (yuan(replacement_fee)) " · " (ctx.t("从余额扣", "from the balance")) },
                                    _ => (ctx.t("不收费", "no fee")),
                                } }
                            }
                            button.danger #confirm-button type="submit" { (ctx.t("确认", "Confirm")) " " (ctx.t(zh, en)) }
                        }
                    } @else {
                        input type="hidden" name="step" value="confirm";
                        input type="hidden" name="idem" value=(random_hex());
                        button.danger #confirm-button type="submit" { (ctx.t("确认", "Confirm")) " " (ctx.t(zh, en)) }
                    }
                }
            }
        }
        p { a href=(format!("/console/desk/account/{}", v.account.id)) { (ctx.t("取消，返回账户", "Cancel, back to the account")) } }
    };
    let title = format!("{} · {}", ctx.t(zh, en), card.no.0);
    html_page(StatusCode::OK, page(&ctx, &title, body))
}

async fn card_review(State(c): State<Console>, signed: Signed, Path((no, name)): Path<(String, String)>) -> Response {
    if let Err(r) = c
        .allow(&signed, Permission::Cards, "card.get", &format!("card:{no}"))
        .await
    {
        return r;
    }
    card_review_page(&c, &signed, &no, &name, None).await
}

async fn card_post(
    State(c): State<Console>,
    signed: Signed,
    Path((no, name)): Path<(String, String)>,
    f: Fields,
) -> Response {
    if f.get("step") != "confirm" {
        if let Err(r) = c
            .allow(&signed, Permission::Cards, "card.get", &format!("card:{no}"))
            .await
        {
            return r;
        }
        return card_review_page(&c, &signed, &no, &name, Some(&f)).await;
    }
    let Some((act, zh, en)) = card_action(&name) else {
        return c.refusal(&signed, StatusCode::NOT_FOUND, "no such card action");
    };
    let body = if act == CardAction::Replace {
        let mut b = json!({ "new_card_no": f.get("new_card_no").trim() });
        if !f.get("fee").is_empty() {
            b["fee"] = Value::from(f.get("fee"));
        }
        b
    } else {
        Value::Null
    };
    let uri = format!("/api/v1/cards/{}/{name}", urlencode(&no));
    let a = if body.is_null() {
        c.post_empty(&signed, &uri, f.get("idem")).await
    } else {
        c.post_json(&signed, Method::POST, &uri, &body, f.get("idem")).await
    };
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    let ctx = signed.ctx();
    let r = a.json();
    let account = r["account"]["id"]
        .as_u64()
        .or_else(|| r["cards"][0]["account"].as_u64())
        .unwrap_or(0);
    // The balance as the answer left it; a change without money left it unchanged.
    let balance = r["account"]["balance"]
        .as_str()
        .map(str::to_string)
        .or_else(|| r["money"]["balance_after"].as_str().map(str::to_string))
        .or_else(|| c.admin.ledger.account(account).map(|a| yuan(a.balance)));
    let body = html! {
        (notice("ok", &format!("{} {}", ctx.t(zh, en), ctx.t("已完成。", "done."))))
        @if a.replayed {
            (notice("warn", ctx.t("此表单已提交过；这是第一次提交的结果，未重复操作。", "This form was sent before: this is the first answer; nothing was done twice.")))
        }
        table #result-cards {
            tr { th { (ctx.t("卡号", "Card number")) } th { (ctx.t("状态", "Status")) } }
            @for card in r["cards"].as_array().into_iter().flatten() {
                tr { td.mono { (card["card_no"].as_str().unwrap_or("")) } td { (status_cell(&ctx, card["status"].as_str().unwrap_or(""))) } }
            }
        }
        dl.facts #result {
            @if let Some(b) = &balance {
                dt { (ctx.t("余额（元）", "Balance (yuan)")) } dd #result-balance { (b) }
            }
            @if let Some(m) = r.get("money").filter(|m| !m.is_null()) {
                dt { (ctx.t("金额（元）", "Amount (yuan)")) } dd { (m["amount"].as_str().unwrap_or("")) " · " (m["kind"].as_str().unwrap_or("")) " · " (m["method"].as_str().unwrap_or("")) }
                dt { (ctx.t("交易号", "Tx id")) } dd #result-tx { (m["tx_id"]) }
            }
            dt { (ctx.t("黑名单版本", "Blacklist version")) } dd #result-blacklist { (r["blacklist_version"]) }
        }
        p { a #back href=(format!("/console/desk/account/{account}")) { (ctx.t("返回账户", "Back to the account")) } }
    };
    html_page(StatusCode::OK, page(&ctx, ctx.t(zh, en), body))
}

// ---- money ----------------------------------------------------------------------------------

fn money_texts(op: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match op {
        "topup" => ("充值", "Top up", "topup"),
        "refund" => ("退款", "Refund", "refund"),
        "fee" => ("收费", "Fee", "fees"),
        _ => return None,
    })
}

/// `"12.5"` → 12.50 yuan, by the API's rule (`input::parse_yuan`); a form field's
/// surrounding spaces are the browser's, not the operator's.
fn parse_yuan(s: &str) -> Option<Decimal> {
    cardgate_domain::rules::input::parse_yuan(s.trim()).ok().map(from_fen)
}

async fn money_post(
    State(c): State<Console>,
    signed: Signed,
    Path((id, op)): Path<(String, String)>,
    f: Fields,
) -> Response {
    let ctx = signed.ctx();
    let Some((zh, en, endpoint)) = money_texts(&op) else {
        return c.refusal(&signed, StatusCode::NOT_FOUND, "no such money operation");
    };
    let target = format!("account:{id}");
    if f.get("step") != "confirm" {
        if let Err(r) = c.allow(&signed, Permission::Money, "account.get", &target).await {
            return r;
        }
        let Some(v) = id.parse().ok().and_then(|id| account_view(&c, id)) else {
            return c.refusal(&signed, StatusCode::NOT_FOUND, "no such account");
        };
        let all_params = c.admin.ledger.params();
        let params = all_params.for_kind(v.account.kind);
        // The amount and its effect on the balance, as the review shows them.
        let (amount, delta) = match op.as_str() {
            "fee" => {
                let amount = match f.get("fee") {
                    "temporary_card" => params.temporary_card_fee,
                    _ => params.replacement_fee,
                };
                (
                    Some(amount),
                    if f.get("method") == "balance" {
                        -amount
                    } else {
                        Decimal::ZERO
                    },
                )
            }
            "refund" => {
                let a = parse_yuan(f.get("amount"));
                (a, -a.unwrap_or_default())
            }
            _ => {
                let a = parse_yuan(f.get("amount"));
                (a, a.unwrap_or_default())
            }
        };
        let body = html! {
            (account_facts(&ctx, &v))
            @match amount {
                None => {
                    (notice("error", ctx.t("金额应为元，最多两位小数，如 100.00。", "The amount is yuan with at most two decimals, e.g. 100.00.")))
                    p { a href=(format!("/console/desk/account/{id}")) { (ctx.t("返回", "Back")) } }
                }
                Some(amount) => {
                    dl.facts #review {
                        dt { (ctx.t("金额（元）", "Amount (yuan)")) } dd #review-amount { (yuan(amount)) }
                        @if op == "fee" {
                            dt { (ctx.t("收费项目", "Fee")) } dd { (f.get("fee")) " · " (f.get("method")) }
                        }
                        @if op == "refund" {
                            dt { (ctx.t("原因", "Reason")) } dd { (f.get("reason")) }
                        }
                        dt { (ctx.t("操作后余额（元）", "Balance after (yuan)")) } dd #review-balance { (yuan(v.account.balance + delta)) }
                    }
                    form.card #confirm method="post" action=(format!("/console/desk/account/{id}/money/{op}")) {
                        (ctx.csrf_field())
                        input type="hidden" name="step" value="confirm";
                        input type="hidden" name="idem" value=(random_hex());
                        input type="hidden" name="amount" value=(yuan(amount));
                        input type="hidden" name="reason" value=(f.get("reason"));
                        input type="hidden" name="fee" value=(f.get("fee"));
                        input type="hidden" name="method" value=(f.get("method"));
                        button.danger #confirm-button type="submit" { (ctx.t("确认", "Confirm")) " " (ctx.t(zh, en)) }
                    }
                    p { a href=(format!("/console/desk/account/{id}")) { (ctx.t("取消，返回账户", "Cancel, back to the account")) } }
                }
            }
        };
        return html_page(StatusCode::OK, page(&ctx, ctx.t(zh, en), body));
    }
    let body = match op.as_str() {
        "fee" => json!({ "fee": f.get("fee"), "method": f.get("method") }),
        "refund" => json!({ "amount": f.get("amount"), "reason": f.get("reason") }),
        _ => json!({ "amount": f.get("amount") }),
    };
    let uri = format!("/api/v1/accounts/{}/{endpoint}", urlencode(&id));
    let a = c.post_json(&signed, Method::POST, &uri, &body, f.get("idem")).await;
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    let m = &a.json()["money"];
    let body = html! {
        (notice("ok", &format!("{} {}", ctx.t(zh, en), ctx.t("已完成。", "done."))))
        @if a.replayed {
            (notice("warn", ctx.t("此表单已提交过；这是第一次提交的结果，未重复操作。", "This form was sent before: this is the first answer; nothing was done twice.")))
        }
        dl.facts #result {
            dt { (ctx.t("金额（元）", "Amount (yuan)")) } dd { (m["amount"].as_str().unwrap_or("")) }
            dt { (ctx.t("余额（元）", "Balance (yuan)")) } dd #result-balance { (m["balance_after"].as_str().unwrap_or("")) }
            dt { (ctx.t("交易号", "Tx id")) } dd #result-tx { (m["tx_id"]) }
        }
        p { a #back href=(format!("/console/desk/account/{id}")) { (ctx.t("返回账户", "Back to the account")) } }
    };
    html_page(StatusCode::OK, page(&ctx, ctx.t(zh, en), body))
}

// ---- consumption details, fee list ------------------------------------------------------

/// The API path and query of a history request from the page's query.
fn history_uri(q: &HashMap<String, String>, csv: bool) -> Option<String> {
    let base = match (q.get("card").map(|s| s.trim()), q.get("account").map(|s| s.trim())) {
        (Some(card), _) if !card.is_empty() => format!("/api/v1/cards/{}/transactions", urlencode(card)),
        (_, Some(acc)) if !acc.is_empty() => format!("/api/v1/accounts/{}/transactions", urlencode(acc)),
        _ => return None,
    };
    let mut query = vec![format!("format={}", if csv { "csv" } else { "json" })];
    for k in ["from", "to"] {
        if let Some(v) = q.get(k).filter(|v| !v.is_empty()) {
            query.push(format!("{k}={}", urlencode(v)));
        }
    }
    Some(format!("{base}?{}", query.join("&")))
}

pub(super) fn today_str(c: &Console) -> String {
    local_time(c.admin.ledger.now_ms(), c.tz())[..10].to_string()
}

fn days_ago_str(c: &Console, days: i64) -> String {
    local_time(c.admin.ledger.now_ms() - days * 86_400_000, c.tz())[..10].to_string()
}

pub(super) fn qs(q: &HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = q
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect();
    pairs.sort();
    pairs.join("&")
}

async fn history_page(
    State(c): State<Console>,
    signed: Signed,
    Query(mut q): Query<HashMap<String, String>>,
) -> Response {
    let ctx = signed.ctx();
    q.entry("from".into()).or_insert_with(|| days_ago_str(&c, 30));
    q.entry("to".into()).or_insert_with(|| today_str(&c));
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let form = html! {
        form #history-form method="get" action="/console/history" {
            label { (ctx.t("卡号", "Card number")) " " input #history-card type="text" name="card" value=(get("card")) size="20"; }
            label { (ctx.t("或账户", "or account")) " " input type="text" name="account" value=(get("account")) size="8"; }
            label { (ctx.t("从", "From")) " " input #history-from type="date" name="from" value=(get("from")); }
            label { (ctx.t("到", "To")) " " input #history-to type="date" name="to" value=(get("to")); }
            button type="submit" { (ctx.t("查询", "Show")) }
        }
    };
    let title = ctx.t("消费明细", "Consumption details");
    let Some(uri) = history_uri(&q, false) else {
        if let Err(r) = c.allow(&signed, Permission::History, "history.get", "").await {
            return r;
        }
        return html_page(StatusCode::OK, page(&ctx, title, form));
    };
    let a = c.get(&signed, &uri).await;
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    let h = a.json();
    let rows = h["rows"].as_array().cloned().unwrap_or_default();
    let body = html! {
        (form)
        @if h["complete"] == Value::Bool(false) {
            (notice("warn", ctx.t(
                "网关日志不再覆盖整个时间段；更早的记录请在中心库查询。",
                "The gateway's journal does not reach back over the whole range; the central store has the earlier records."
            )))
        }
        p { a #history-csv href=(format!("/console/history.csv?{}", qs(&q))) { (ctx.t("下载 CSV", "Download CSV")) } " · " (rows.len()) " " (ctx.t("条", "rows")) }
        table #history {
            tr {
                th { (ctx.t("时间", "Time")) } th { (ctx.t("类型", "Kind")) } th { (ctx.t("结果", "Outcome")) }
                th.num { (ctx.t("金额", "Amount")) } th.num { (ctx.t("余额变动", "Change")) } th.num { (ctx.t("余额", "Balance")) }
                th { (ctx.t("卡号", "Card")) } th { (ctx.t("终端", "Terminal")) } th { (ctx.t("交易号", "Tx id")) } th { (ctx.t("拒绝原因", "Decline")) } th { (ctx.t("操作员", "Operator")) }
            }
            @for r in &rows {
                tr {
                    td { (r["time"].as_str().map_or("", |t| &t[..t.len().min(19)])) }
                    td { (r["kind"].as_str().unwrap_or("")) }
                    td { (r["outcome"].as_str().unwrap_or("")) }
                    td.num { (r["amount"].as_str().unwrap_or("")) }
                    td.num { (r["balance_change"].as_str().unwrap_or("")) }
                    td.num { (r["balance_after"].as_str().unwrap_or("")) }
                    td.mono { (r["card"].as_str().unwrap_or("")) }
                    td.num { (r["terminal"]) }
                    td.num { (r["tx_id"]) }
                    td { (r["decline_reason"].as_str().unwrap_or("")) }
                    td { (r["operator"].as_str().unwrap_or("")) }
                }
            }
        }
    };
    html_page(StatusCode::OK, page(&ctx, title, body))
}

/// A CSV answer of the API, as a file to save.
pub(super) fn csv_download(c: &Console, signed: &Signed, a: super::Answer, name: &str) -> Response {
    if !a.ok() {
        return c.refusal(signed, a.status, &a.error());
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        a.body,
    )
        .into_response()
}

async fn history_csv(State(c): State<Console>, signed: Signed, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(uri) = history_uri(&q, true) else {
        return c.refusal(&signed, StatusCode::BAD_REQUEST, "name a card or an account");
    };
    let a = c.get(&signed, &uri).await;
    let who = q
        .get("card")
        .filter(|s| !s.is_empty())
        .map(|s| format!("card-{s}"))
        .or_else(|| q.get("account").map(|s| format!("account-{s}")))
        .unwrap_or_default();
    let name: String = format!("transactions-{who}.csv")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .collect();
    csv_download(&c, &signed, a, &name)
}

fn fees_uri(day: &str, csv: bool) -> String {
    format!(
        "/api/v1/fees?day={}&format={}",
        urlencode(day),
        if csv { "csv" } else { "json" }
    )
}

async fn fees_page(State(c): State<Console>, signed: Signed, Query(q): Query<HashMap<String, String>>) -> Response {
    let ctx = signed.ctx();
    let day = q.get("day").cloned().unwrap_or_else(|| today_str(&c));
    let a = c.get(&signed, &fees_uri(&day, false)).await;
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    let list = a.json();
    let body = html! {
        form method="get" action="/console/fees" {
            label { (ctx.t("日期", "Day")) " " input type="date" name="day" value=(day); }
            button type="submit" { (ctx.t("查询", "Show")) }
        }
        p { a #fees-csv href=(format!("/console/fees.csv?day={}", urlencode(&day))) { (ctx.t("下载 CSV", "Download CSV")) } }
        table #fees {
            tr { th { (ctx.t("时间", "Time")) } th { (ctx.t("交易号", "Tx id")) } th { (ctx.t("账户", "Account")) } th { (ctx.t("学号/工号", "Person id")) } th { (ctx.t("姓名", "Name")) } th { (ctx.t("项目", "Fee")) } th.num { (ctx.t("金额", "Amount")) } th { (ctx.t("方式", "Method")) } th { (ctx.t("操作员", "Operator")) } }
            @for r in list["fees"].as_array().into_iter().flatten() {
                tr {
                    td { (r["time"].as_str().map_or("", |t| &t[..t.len().min(19)])) }
                    td.num { (r["tx_id"]) } td.num { (r["account"]) }
                    td { (r["person_id"].as_str().unwrap_or("")) } td { (r["name"].as_str().unwrap_or("")) }
                    td { (r["fee"].as_str().unwrap_or("")) } td.num { (r["amount"].as_str().unwrap_or("")) }
                    td { (r["method"].as_str().unwrap_or("")) } td { (r["operator"].as_str().unwrap_or("")) }
                }
            }
            tr { th colspan="6" { (ctx.t("合计", "Total")) } th.num #fees-total { (list["total"].as_str().unwrap_or("")) } th colspan="2" {} }
        }
    };
    html_page(StatusCode::OK, page(&ctx, ctx.t("收费日报", "Daily fee list"), body))
}

async fn fees_csv(State(c): State<Console>, signed: Signed, Query(q): Query<HashMap<String, String>>) -> Response {
    let day = q.get("day").cloned().unwrap_or_else(|| today_str(&c));
    let a = c.get(&signed, &fees_uri(&day, true)).await;
    let name: String = format!("fees-{day}.csv")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .collect();
    csv_download(&c, &signed, a, &name)
}
