//! Which scope each request to an upstream needs, and which tools are hidden.
//!
//! A tool needs the upstream's read scope when its `readOnlyHint` says so, and the
//! write scope otherwise (including tools whose hints are not known yet: the safe
//! side). The configuration's rules, first match wins, override that per tool name
//! (globs), or deny a tool: absent from `tools/list`, refused at `tools/call`.
//! Resources, prompts and completions need the read scope.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        RwLock,
    },
};

use rmcp::model::Tool;
use tokio::time::Instant;

use super::config::{RuleAccess, ToolRule};
use crate::mcp::{Access, Call, CallPolicy, Need};

/// Tools an upstream answer names at most are remembered (a server listing more is
/// not remembered beyond this: those tools need the write scope).
pub(super) const MAX_KNOWN_TOOLS: usize = 4096;

/// The longest tool name remembered, in bytes (the MCP spec's tool names have at
/// most 128 characters); a longer one is left unknown, so it needs the write scope.
pub(super) const MAX_KNOWN_NAME: usize = 512;

/// How long a listing's word that a tool is read-only is taken as known. An upstream
/// says when its tools change only to a client that can hear it: a session of an
/// older revision, never a request without one (2026-07-28 sends it only on a
/// `subscriptions/listen` stream, which Gatehouse does not hold), and a stdio server
/// need not say so at all. Past this, the next call of the tool lists them again
/// (at most once a second, see `Shared::learn_tool`), so that a tool which stopped
/// being read-only needs the write scope within about this long of the change. A
/// write tool's hint is the strict side already, and one of a tool Gatehouse's own
/// listing has been seen not to name (one the server lists only to some clients)
/// cannot be refreshed by it: those hold until the server says its tools changed.
/// A hint only a session's listing gave ages like the others until Gatehouse's own
/// listing has run since (it may never have succeeded), and one its listing named
/// and then no longer names is forgotten (the tool was removed, and may come back
/// as a write tool).
pub const HINTS_HOLD: std::time::Duration = std::time::Duration::from_secs(30);

/// What a listing said of one tool.
#[derive(Clone, Copy)]
struct Hint {
    read_only: bool,
    /// When a listing last said so.
    at: Instant,
    /// Whether the last listing of all the upstream's tools named it (a tool only a
    /// session lists is not).
    listed: bool,
    /// Whether a listing of all the upstream's tools has run since a session's
    /// listing first named it: one that did not name it makes it a tool only
    /// sessions see.
    checked: bool,
}

impl Hint {
    /// Whether what it says is still taken as known (see [`HINTS_HOLD`]).
    fn holds(&self) -> bool {
        let session_only = !self.listed && self.checked;
        !self.read_only || session_only || self.at.elapsed() < HINTS_HOLD
    }
}

pub struct ToolPolicy {
    rules: Vec<ToolRule>,
    /// What the upstream said of each tool (`readOnlyHint`), learnt from every
    /// `tools/list` answer that passes through.
    read_only: RwLock<HashMap<String, Hint>>,
    /// How many times the upstream said its tools changed
    /// (`notifications/tools/list_changed`), and how many of those a completed
    /// listing has seen: while the first is ahead, what it said of them may no
    /// longer hold.
    changes: AtomicU64,
    seen: AtomicU64,
}

impl ToolPolicy {
    pub fn new(rules: Vec<ToolRule>) -> Self {
        ToolPolicy {
            rules,
            read_only: RwLock::default(),
            changes: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        }
    }

    fn rule(&self, tool: &str) -> Option<RuleAccess> {
        // No tool has such a name (the spec's have 128 characters at most), and
        // none is remembered: refused as denied ones are, before any rule costs
        // time in proportion to it.
        if tool.len() > MAX_KNOWN_NAME {
            return Some(RuleAccess::Deny);
        }
        // Folded once, only when a deny rule does not match the name as it is.
        let folded = std::cell::OnceCell::new();
        self.rules
            .iter()
            .find(|r| {
                r.matches(tool)
                    || r.access == RuleAccess::Deny
                        && folded
                            .get_or_init(|| super::config::ascii_folded(tool))
                            .as_deref()
                            .is_some_and(|folded| r.matches(folded))
            })
            .map(|r| r.access)
    }

    /// Whether `tool` may be listed and called at all.
    pub fn visible(&self, tool: &str) -> bool {
        self.rule(tool) != Some(RuleAccess::Deny)
    }

    /// The scope calling `tool` needs; `None` for a denied tool (the relay refuses it).
    pub fn tool_access(&self, tool: &str) -> Option<Access> {
        match self.rule(tool) {
            Some(RuleAccess::Deny) => None,
            Some(RuleAccess::Read) => Some(Access::Read),
            Some(RuleAccess::Write) => Some(Access::Write),
            None => {
                let known = self.read_only.read().unwrap_or_else(|p| p.into_inner());
                Some(match known.get(tool) {
                    Some(Hint {
                        read_only: true, ..
                    }) => Access::Read,
                    _ => Access::Write,
                })
            }
        }
    }

    /// Whether what `tool` needs is known: a `read` or `write` rule names it, or the
    /// upstream listed it less than [`HINTS_HOLD`] ago and has not said since that its
    /// tools changed. A denied
    /// tool counts as unknown, as a tool the upstream does not have does: both take
    /// the same path (a listing at most every so often), so a caller cannot tell
    /// them apart by the time they take.
    pub fn knows(&self, tool: &str) -> bool {
        match self.rule(tool) {
            Some(RuleAccess::Deny) => false,
            Some(_) => true,
            None => {
                !self.is_stale()
                    && self
                        .read_only
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(tool)
                        .is_some_and(Hint::holds)
            }
        }
    }

    /// Whether the last listing of all the upstream's tools named `tool`, however
    /// long ago; never for a denied tool, which takes the path of an unknown one
    /// (see [`Self::knows`]), nor for one the upstream has removed since (or does
    /// not list to Gatehouse).
    pub fn has_hint(&self, tool: &str) -> bool {
        self.rule(tool).is_none()
            && self
                .read_only
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(tool)
                .is_some_and(|hint| hint.listed)
    }

    /// The upstream's tools changed: the next call of a tool no rule names lists
    /// them again before its scope is decided (a tool that was read-only may not be
    /// now). Until then, what was learnt still holds.
    pub fn mark_stale(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    pub fn is_stale(&self) -> bool {
        self.seen.load(Ordering::Acquire) < self.changes.load(Ordering::Acquire)
    }

    /// The changes announced so far: what a listing that starts now will have seen
    /// once it completes.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Remembers the hints of the tools a listing gave, one that started when
    /// [`ToolPolicy::changes`] said `as_of`; `complete` when it listed every tool
    /// (not one page a client asked for), which makes the hints fresh up to `as_of`.
    /// A listing that started before a change another listing has seen since is
    /// older than what is known: it is ignored, so a slow one cannot bring back what
    /// a change replaced. A listing that failed or was given up never gets here, and
    /// the hints stay stale.
    pub fn learn(&self, tools: &[Tool], as_of: u64, complete: bool) {
        self.learn_since(tools, as_of, complete.then(Instant::now));
    }

    /// [`Self::learn`], for a listing of all tools that started at `complete`: a
    /// hint a session's listing gave after that may name a tool the listing did
    /// not know of yet, so it is not taken as one only sessions see.
    pub fn learn_since(&self, tools: &[Tool], as_of: u64, complete: Option<Instant>) {
        let now = Instant::now();
        let mut known = self.read_only.write().unwrap_or_else(|p| p.into_inner());
        if as_of < self.seen.load(Ordering::Acquire) {
            return;
        }
        if let Some(started) = complete {
            // What it does not name: a tool it named before was removed, and is
            // forgotten; one only a session named before it started is a tool only
            // sessions see, and its hint holds for them.
            let named: std::collections::HashSet<&str> =
                tools.iter().map(|tool| tool.name.as_ref()).collect();
            known.retain(|name, hint| {
                if named.contains(name.as_str()) {
                    return true;
                }
                hint.checked |= hint.at <= started;
                !hint.listed
            });
        }
        for tool in tools {
            // Full, it still takes changes to the tools it knows.
            if known.len() >= MAX_KNOWN_TOOLS && !known.contains_key(tool.name.as_ref()) {
                continue;
            }
            if tool.name.len() > MAX_KNOWN_NAME {
                continue;
            }
            let read_only = tool
                .annotations
                .as_ref()
                .and_then(|a| a.read_only_hint)
                .unwrap_or(false);
            let (listed, checked) = match known.get(tool.name.as_ref()) {
                _ if complete.is_some() => (true, true),
                Some(hint) => (hint.listed, hint.checked),
                None => (false, false),
            };
            let hint = Hint {
                read_only,
                at: now,
                listed,
                checked,
            };
            known.insert(tool.name.to_string(), hint);
        }
        if complete.is_some() {
            // Under the lock: the hints and what they have seen change together.
            self.seen.fetch_max(as_of, Ordering::AcqRel);
        }
    }
}

impl CallPolicy for ToolPolicy {
    fn needs(&self, call: &Call<'_>) -> Need {
        match call.method() {
            // A denied tool needs the write scope, as an unknown one does, and the
            // relay answers it as unknown: no token can tell the two apart, so the
            // deny rules cannot be mapped by trying names.
            "tools/call" => Need::Scope(
                call.name()
                    .and_then(|n| self.tool_access(n))
                    .unwrap_or(Access::Write),
            ),
            "resources/read"
            | "resources/list"
            | "resources/templates/list"
            | "resources/subscribe"
            | "resources/unsubscribe"
            | "prompts/get"
            | "prompts/list"
            | "completion/complete" => Need::Scope(Access::Read),
            _ => Need::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, sync::Arc};

    use rmcp::model::ToolAnnotations;

    use super::*;

    fn tool(name: &'static str, read_only: Option<bool>) -> Tool {
        let mut tool = Tool::new(name, "t", Arc::new(serde_json::Map::new()));
        if let Some(read_only) = read_only {
            tool = tool.with_annotations(ToolAnnotations::new().read_only(read_only));
        }
        tool
    }

    fn call(method: &'static str, name: Option<&'static str>) -> Call<'static> {
        Call {
            method: Some(Cow::Borrowed(method)),
            name: name.map(Cow::Borrowed),
            uri: None,
        }
    }

    #[test]
    fn hints_decide_unless_a_rule_does() {
        let policy = ToolPolicy::new(vec![
            ToolRule::parse("toggle-*", "read").expect("rule"),
            ToolRule::parse("secret*", "deny").expect("rule"),
            ToolRule::parse("*", "write").expect("rule"),
        ]);
        let plain = ToolPolicy::new(Vec::new());
        let tools = [
            tool("echo", Some(true)),
            tool("add", Some(false)),
            tool("mystery", None),
        ];
        plain.learn(&tools, 0, true);
        policy.learn(&tools, 0, true);
        assert_eq!(plain.tool_access("echo"), Some(Access::Read));
        assert_eq!(plain.tool_access("add"), Some(Access::Write));
        assert_eq!(plain.tool_access("mystery"), Some(Access::Write));
        assert_eq!(plain.tool_access("never-listed"), Some(Access::Write));
        // Rules win over hints, first match first.
        assert_eq!(policy.tool_access("toggle-logging"), Some(Access::Read));
        assert_eq!(policy.tool_access("echo"), Some(Access::Write));
        assert_eq!(policy.tool_access("secret-stuff"), None);
        assert!(!policy.visible("secret-stuff"));
        // A deny rule ignores case (an upstream may too); the others do not.
        assert_eq!(policy.tool_access("SECRET-stuff"), None);
        assert!(!policy.visible("Secret-Stuff"));
        assert_eq!(policy.tool_access("Toggle-logging"), Some(Access::Write));
        assert!(policy.visible("echo"));
        // Also where JavaScript's or Python's case mappings make a letter outside
        // ASCII one of its letters: `ſ` (long s) upper-cases to `S`, the Kelvin sign
        // lower-cases to `k`, `ß` to `SS`.
        assert_eq!(policy.tool_access("\u{17f}ecret-stuff"), None);
        assert!(!policy.visible("\u{17f}ECRET"));
        let kill = ToolPolicy::new(vec![ToolRule::parse("kill_*", "deny").expect("rule")]);
        assert_eq!(kill.tool_access("\u{212a}ill_all"), None);
        let class = ToolPolicy::new(vec![ToolRule::parse("class", "deny").expect("rule")]);
        assert_eq!(class.tool_access("cla\u{df}"), None);
        // Capital sharp s: lower `ß`, upper itself; Python's `casefold` gives `ss`.
        assert_eq!(class.tool_access("cla\u{1e9e}"), None);
        // A name no tool has (past 512 bytes) is refused as a denied one, whatever
        // the rules say.
        let long = "a".repeat(513);
        assert_eq!(plain.tool_access(&long), None);
        assert!(!plain.visible(&long));
        // A name that is another outside ASCII is not folded into a match.
        assert_eq!(policy.tool_access("s\u{e9}cret"), Some(Access::Write));
    }

    /// What a listing said holds for HINTS_HOLD: an upstream need not say its tools
    /// changed (nor can it to requests without a session).
    #[tokio::test(start_paused = true)]
    async fn hints_are_known_for_a_while() {
        let policy = ToolPolicy::new(vec![ToolRule::parse("hidden", "deny").expect("rule")]);
        let tools = [
            tool("echo", Some(true)),
            tool("hidden", Some(true)),
            tool("add", Some(false)),
        ];
        policy.learn(&tools, 0, true);
        // Only a session's listing names this one, and Gatehouse's listing has run
        // since without it: Gatehouse's cannot refresh it.
        policy.learn(&[tool("session-only", Some(true))], 0, false);
        policy.learn(&tools, 0, true);
        assert!(policy.knows("echo"));
        tokio::time::advance(HINTS_HOLD - std::time::Duration::from_secs(1)).await;
        assert!(policy.knows("echo"));
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(!policy.knows("echo"));
        // A write tool's hint is the strict side already.
        assert!(policy.knows("add"));
        assert!(policy.knows("session-only"));
        assert!(policy.has_hint("echo"));
        // Meanwhile the hint decides, until a listing says otherwise.
        assert_eq!(policy.tool_access("echo"), Some(Access::Read));
        policy.learn(&[tool("echo", Some(false))], 0, true);
        assert!(policy.knows("echo"));
        assert_eq!(policy.tool_access("echo"), Some(Access::Write));
        // A denied tool is never a known one, nor one with a hint.
        assert!(!policy.knows("hidden"));
        assert!(!policy.has_hint("hidden"));
        // Nor is one only a session's listing named: it is listed for as seldom
        // as an unknown one, though its hint decides.
        policy.learn(&[tool("gone", Some(true))], 0, false);
        assert!(policy.knows("gone"));
        assert!(!policy.has_hint("gone"));
        assert_eq!(policy.tool_access("gone"), Some(Access::Read));
        // A tool the last listing of all tools named, and the next one does not,
        // was removed: forgotten, so it needs the write scope (it may come back as
        // a write tool without the server saying so).
        policy.learn(
            &[tool("echo", Some(true)), tool("gone", Some(true))],
            0,
            true,
        );
        assert!(policy.has_hint("gone"));
        policy.learn(&[tool("echo", Some(true))], 0, true);
        assert!(!policy.has_hint("gone"));
        assert!(!policy.knows("gone"));
        assert!(policy.has_hint("echo"));
        assert_eq!(policy.tool_access("gone"), Some(Access::Write));
    }

    /// A read-only hint only a session's listing gave (Gatehouse's own listing
    /// failed at start-up, say) ages like the others, so that the next call lists
    /// the tools; once Gatehouse's listing has run without naming the tool, it is
    /// one only sessions see, and its hint holds for them.
    #[tokio::test(start_paused = true)]
    async fn a_hint_only_a_session_gave_ages_until_gatehouses_listing_runs() {
        let policy = ToolPolicy::new(Vec::new());
        policy.learn(&[tool("echo", Some(true))], 0, false);
        assert!(policy.knows("echo"));
        tokio::time::advance(HINTS_HOLD).await;
        assert!(!policy.knows("echo"), "listed again before its next call");
        // The listing names it (now a write tool): it decides from then on.
        policy.learn(&[tool("echo", Some(false))], 0, true);
        assert!(policy.knows("echo"));
        assert_eq!(policy.tool_access("echo"), Some(Access::Write));
        // A session-only tool: Gatehouse's listing ran and did not name it.
        policy.learn(&[tool("mine", Some(true))], 0, false);
        policy.learn(&[tool("echo", Some(false))], 0, true);
        tokio::time::advance(HINTS_HOLD * 2).await;
        assert!(policy.knows("mine"));
        assert_eq!(policy.tool_access("mine"), Some(Access::Read));
        // A session listing it again keeps it so.
        policy.learn(&[tool("mine", Some(true))], 0, false);
        tokio::time::advance(HINTS_HOLD * 2).await;
        assert!(policy.knows("mine"));
        // A listing that started before a session's listing named a tool says
        // nothing of it (the tool may be newer than the listing).
        let started = Instant::now();
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        policy.learn(&[tool("new", Some(true))], 0, false);
        policy.learn_since(&[tool("echo", Some(false))], 0, Some(started));
        tokio::time::advance(HINTS_HOLD).await;
        assert!(!policy.knows("new"));
    }

    #[test]
    fn requests_need_the_scope_of_what_they_touch() {
        let policy = ToolPolicy::new(vec![ToolRule::parse("hidden", "deny").expect("rule")]);
        policy.learn(&[tool("echo", Some(true))], 0, true);
        assert_eq!(
            policy.needs(&call("tools/call", Some("echo"))),
            Need::Scope(Access::Read)
        );
        assert_eq!(
            policy.needs(&call("tools/call", Some("other"))),
            Need::Scope(Access::Write)
        );
        // A denied tool needs what an unknown one needs: no token tells them apart.
        assert_eq!(
            policy.needs(&call("tools/call", Some("hidden"))),
            Need::Scope(Access::Write)
        );
        assert_eq!(
            policy.needs(&call("tools/call", None)),
            Need::Scope(Access::Write)
        );
        assert_eq!(
            policy.needs(&call("prompts/get", Some("p"))),
            Need::Scope(Access::Read)
        );
        assert_eq!(
            policy.needs(&call("resources/read", None)),
            Need::Scope(Access::Read)
        );
        assert_eq!(policy.needs(&call("tools/list", None)), Need::Nothing);
        assert_eq!(policy.needs(&call("initialize", None)), Need::Nothing);
    }

    #[test]
    fn a_change_of_tools_makes_their_hints_unknown_until_listed_again() {
        let policy = ToolPolicy::new(vec![ToolRule::parse("toggle", "read").expect("rule")]);
        policy.learn(&[tool("query", Some(true))], 0, true);
        assert!(policy.knows("query"));
        policy.mark_stale();
        // Listed again before its next call; rules need no listing.
        assert!(!policy.knows("query"));
        assert!(policy.knows("toggle"));
        // Until then, what was learnt holds.
        assert_eq!(policy.tool_access("query"), Some(Access::Read));
        // A listing starts (A); another change comes while it runs: still stale after.
        let a = policy.changes();
        policy.mark_stale();
        // The next listing (B) saw both, and says the tool now writes.
        let b = policy.changes();
        policy.learn(&[tool("query", Some(false))], b, true);
        assert!(policy.knows("query"));
        assert_eq!(policy.tool_access("query"), Some(Access::Write));
        // A, slower, ends last with what it saw before: ignored.
        policy.learn(&[tool("query", Some(true))], a, true);
        assert!(policy.knows("query"));
        assert_eq!(policy.tool_access("query"), Some(Access::Write));
        // A page a client listed teaches hints but does not make them fresh.
        policy.mark_stale();
        policy.learn(&[tool("query", Some(true))], policy.changes(), false);
        assert!(!policy.knows("query"));
        assert_eq!(policy.tool_access("query"), Some(Access::Read));
    }

    #[test]
    fn a_denied_tool_is_as_unknown_as_one_the_upstream_does_not_have() {
        let policy = ToolPolicy::new(vec![ToolRule::parse("secret_*", "deny").expect("rule")]);
        policy.learn(&[tool("secret_keys", Some(true))], 0, true);
        for name in ["secret_keys", "no_such_tool"] {
            assert!(!policy.knows(name), "{name}");
        }
        assert_eq!(policy.tool_access("secret_keys"), None);
        assert!(!policy.visible("secret_keys"));
    }

    #[test]
    fn a_listing_that_ends_after_a_change_leaves_the_hints_stale() {
        let policy = ToolPolicy::new(Vec::new());
        let as_of = policy.changes();
        policy.mark_stale();
        policy.learn(&[tool("query", Some(true))], as_of, true);
        assert!(policy.is_stale());
        assert!(!policy.knows("query"));
    }

    /// A name longer than any tool's may be is not remembered: the tool stays
    /// unknown, so it needs the write scope.
    #[test]
    fn names_past_the_longest_a_tool_may_have_are_not_remembered() {
        let policy = ToolPolicy::new(Vec::new());
        let long: &'static str = Box::leak("x".repeat(MAX_KNOWN_NAME + 1).into_boxed_str());
        let longest: &'static str = Box::leak("y".repeat(MAX_KNOWN_NAME).into_boxed_str());
        policy.learn(
            &[tool(long, Some(true)), tool(longest, Some(true))],
            0,
            true,
        );
        assert!(!policy.knows(long));
        assert_eq!(policy.tool_access(longest), Some(Access::Read));
    }

    #[test]
    fn a_full_memory_still_takes_changes_to_the_tools_it_knows() {
        let policy = ToolPolicy::new(Vec::new());
        let many: Vec<Tool> = (0..MAX_KNOWN_TOOLS)
            .map(|i| {
                let name: &'static str = Box::leak(format!("t{i}").into_boxed_str());
                tool(name, Some(true))
            })
            .collect();
        policy.learn(&many, 0, true);
        // A session's listing: a new name first, then a known tool that is no
        // longer read-only.
        policy.learn(
            &[tool("new", Some(true)), tool("t7", Some(false))],
            0,
            false,
        );
        assert!(!policy.knows("new"));
        assert_eq!(policy.tool_access("t7"), Some(Access::Write));
    }
}
