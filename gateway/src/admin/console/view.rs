//! What every console page shares: the language, the layout with the navigation the
//! signed-in role may use, and how money, times and statuses are shown.
//!
//! Texts stand in pairs at their place of use (`lang.t("挂失", "Report lost")`), so
//! that a page reads in both languages at once and neither can go missing.

use cardgate_domain::clock::format_local;
use cardgate_domain::money::to_fen;
use cardgate_domain::operator::{Operator, Permission, Role};
use maud::{DOCTYPE, Markup, html};
use rust_decimal::Decimal;

/// The console's stylesheet, compiled into the binary.
pub const CSS: &str = include_str!("console.css");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// 简体中文, the default.
    Zh,
    En,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "zh" => Some(Lang::Zh),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }

    pub fn t(self, zh: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }

    pub fn role(self, r: Role) -> &'static str {
        match r {
            Role::Director => self.t("主任", "Director"),
            Role::SystemAdmin => self.t("系统管理员", "System admin"),
            Role::DataAdmin => self.t("数据管理员", "Data admin"),
            Role::CardDesk => self.t("卡务管理员", "Card desk"),
            Role::DoorAdmin => self.t("门禁管理员", "Door admin"),
            Role::AttendanceAdmin => self.t("考勤管理员", "Attendance admin"),
        }
    }

    /// A card's or an account's status as the API names it.
    pub fn status(self, s: &str) -> String {
        let t = match s {
            "active" => self.t("正常", "active"),
            "lost" => self.t("挂失", "lost"),
            "frozen" => self.t("冻结", "frozen"),
            "cancelled" => self.t("注销", "cancelled"),
            "replaced" => self.t("已补卡", "replaced"),
            "bad" => self.t("坏卡", "bad"),
            "closed" => self.t("已销户", "closed"),
            other => return other.to_string(),
        };
        t.to_string()
    }

    pub fn kind(self, k: &str) -> String {
        let t = match k {
            "student" => self.t("学生", "student"),
            "staff" => self.t("教职工", "staff"),
            "temporary" => self.t("临时", "temporary"),
            other => return other.to_string(),
        };
        t.to_string()
    }
}

/// A Decimal of yuan as shown everywhere: two places, never a float.
pub fn yuan(d: Decimal) -> String {
    to_fen(d)
        .map(super::super::http::yuan)
        .unwrap_or_else(|| d.round_dp(2).to_string())
}

/// A time in the business time zone, to the second.
pub fn local_time(ms: i64, tz: i32) -> String {
    let mut s = format_local(ms, tz);
    s.truncate(19);
    s
}

/// The signed-in operator as a page needs it.
#[derive(Clone)]
pub struct Who {
    pub operator: Operator,
    pub csrf: String,
    pub must_change: bool,
}

/// What a page is drawn with.
#[derive(Clone)]
pub struct Ctx {
    pub lang: Lang,
    pub who: Option<Who>,
    /// The page's path and query, for the language switch to come back to.
    pub here: String,
}

impl Ctx {
    pub fn t(&self, zh: &'static str, en: &'static str) -> &'static str {
        self.lang.t(zh, en)
    }

    pub fn may(&self, p: Permission) -> bool {
        self.who.as_ref().is_some_and(|w| w.operator.role.allows(p))
    }

    pub fn csrf(&self) -> &str {
        self.who.as_ref().map_or("", |w| w.csrf.as_str())
    }

    /// The hidden field every form carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf()); }
    }
}

/// One entry of the navigation: shown only to roles with its permission. `None` as the
/// path is a duty planned but not built: named, greyed, not a link.
struct Nav {
    perm: Permission,
    path: Option<&'static str>,
    zh: &'static str,
    en: &'static str,
}

const NAV: &[Nav] = &[
    // The window's own gate: finding a person. The data admin may look up there (no
    // actions), so the menu shows it to them too.
    Nav {
        perm: Permission::Persons,
        path: Some("/console/desk"),
        zh: "卡务窗口",
        en: "Card desk",
    },
    Nav {
        perm: Permission::History,
        path: Some("/console/history"),
        zh: "消费明细",
        en: "Transactions",
    },
    Nav {
        perm: Permission::Fees,
        path: Some("/console/fees"),
        zh: "收费日报",
        en: "Daily fees",
    },
    Nav {
        perm: Permission::Import,
        path: Some("/console/import"),
        zh: "批量导入",
        en: "Import",
    },
    Nav {
        perm: Permission::Grants,
        path: Some("/console/grants"),
        zh: "补助发放",
        en: "Grants",
    },
    Nav {
        perm: Permission::Params,
        path: Some("/console/params"),
        zh: "参数设置",
        en: "Parameters",
    },
    Nav {
        perm: Permission::Terminals,
        path: Some("/console/terminals"),
        zh: "终端",
        en: "Terminals",
    },
    Nav {
        perm: Permission::Operators,
        path: Some("/console/operators"),
        zh: "操作员",
        en: "Operators",
    },
    Nav {
        perm: Permission::Audit,
        path: Some("/console/audit"),
        zh: "审计日志",
        en: "Audit trail",
    },
    Nav {
        perm: Permission::Doors,
        path: Some("/console/doors"),
        zh: "门禁",
        en: "Doors",
    },
    Nav {
        perm: Permission::Attendance,
        path: Some("/console/attendance"),
        zh: "考勤",
        en: "Attendance",
    },
];

/// Where signing in lands: the page of the role's daily work.
pub fn home_of(role: Role) -> &'static str {
    match role {
        Role::Director | Role::CardDesk => "/console/desk",
        Role::DataAdmin => "/console/import",
        Role::SystemAdmin => "/console/terminals",
        Role::DoorAdmin => "/console/doors",
        Role::AttendanceAdmin => "/console/attendance",
    }
}

/// The page around `body`.
pub fn page(ctx: &Ctx, title: &str, body: Markup) -> Markup {
    let other = match ctx.lang {
        Lang::Zh => Lang::En,
        Lang::En => Lang::Zh,
    };
    let switch = format!("/console/lang?to={}&back={}", other.code(), urlencode(&ctx.here));
    html! {
        (DOCTYPE)
        html lang=(match ctx.lang { Lang::Zh => "zh-CN", Lang::En => "en" }) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (ctx.t("一卡通管理台", "cardgate console")) }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header {
                    span.brand { (ctx.t("一卡通管理台", "cardgate console")) }
                    @if let Some(w) = &ctx.who {
                        nav {
                            @if !w.must_change {
                                @for n in NAV.iter().filter(|n| w.operator.role.allows(n.perm)) {
                                    @match n.path {
                                        Some(p) => a href=(p) class=@if ctx.here.starts_with(p) { "on" } { (ctx.t(n.zh, n.en)) },
                                        None => span.planned { (ctx.t(n.zh, n.en)) },
                                    }
                                }
                            }
                        }
                        span.who {
                            (w.operator.name) " · " (ctx.lang.role(w.operator.role)) " · "
                            a href="/console/password" { (ctx.t("修改密码", "Password")) }
                            form.inline method="post" action="/console/sign-out" {
                                (ctx.csrf_field())
                                button #sign-out type="submit" { (ctx.t("退出", "Sign out")) }
                            }
                        }
                    }
                    a.lang href=(switch) { (other_label(other)) }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn other_label(l: Lang) -> &'static str {
    match l {
        Lang::Zh => "中文",
        Lang::En => "English",
    }
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A notice box: `kind` is "ok", "warn" or "error".
pub fn notice(kind: &str, text: &str) -> Markup {
    html! { p class=(format!("notice {kind}")) { (text) } }
}
