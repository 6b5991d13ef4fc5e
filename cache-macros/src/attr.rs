//! Argument parsing for `#[cached(...)]` and `#[invalidates(...)]`.
//!
//! Parsing never stops at the first problem: each argument that fails is
//! recorded in the [`Ctxt`] and parsing resumes at the next top-level comma,
//! so every mistake in an attribute is reported in one compilation.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::parse::discouraged::Speculative;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, Token, UnOp};

use crate::ctxt::Ctxt;
use crate::template::{self, Template};

/// Argument keywords.
pub(crate) mod kw {
    syn::custom_keyword!(prefix);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(key);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(cache_none);
    syn::custom_keyword!(none_ttl);
    syn::custom_keyword!(unless);
    syn::custom_keyword!(cache);
    syn::custom_keyword!(version);
    syn::custom_keyword!(near);
    syn::custom_keyword!(no_companions);
    syn::custom_keyword!(outbox);
    syn::custom_keyword!(fail_closed);
}

const CACHED_ARGS: &[&str] = &[
    "prefix",
    "ttl",
    "key",
    "skip",
    "cache_none",
    "none_ttl",
    "unless",
    "cache",
    "version",
    "near",
    "crate",
    "no_companions",
];

const INVALIDATES_ARGS: &[&str] = &["prefix", "cache", "outbox", "fail_closed", "crate"];

/// An argument that may be given at most once (`serde_derive`'s `Attr`): a
/// second occurrence is a "duplicate argument" error on its own span. An
/// occurrence whose value was invalid (already reported) still counts as
/// given, so it neither causes a "missing" error nor hides a duplicate.
pub(crate) struct Attr<T> {
    name: &'static str,
    value: Option<(Span, Option<T>)>,
}

impl<T> Attr<T> {
    pub(crate) fn none(name: &'static str) -> Self {
        Attr { name, value: None }
    }

    /// Records an occurrence; `obj` (the argument's name as written) spans
    /// the error if it is a duplicate. `value` is `None` when it was invalid.
    pub(crate) fn set<A: ToTokens>(&mut self, cx: &Ctxt, obj: A, value: Option<T>) {
        let tokens = obj.into_token_stream();
        if self.value.is_some() {
            cx.error_spanned_by(
                tokens,
                format!("duplicate argument `{}`; give it once", self.name),
            );
        } else {
            let span = tokens
                .into_iter()
                .next()
                .map_or_else(Span::call_site, |t| t.span());
            self.value = Some((span, value));
        }
    }

    /// The (valid) value with the span of the argument's name.
    pub(crate) fn get_with_span(self) -> Option<(Span, T)> {
        self.value.and_then(|(span, v)| v.map(|v| (span, v)))
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value.and_then(|(_, v)| v)
    }

    /// True when the argument was written, valid or not.
    pub(crate) fn is_set(&self) -> bool {
        self.value.is_some()
    }
}

/// A time-to-live argument.
pub(crate) enum Ttl {
    /// `ttl = 3600`: whole seconds, at least one.
    Secs(u64, Span),
    /// `ttl = expr`: an expression of type `Duration`.
    Expr(Box<Expr>),
}

/// Everything `#[cached(...)]` accepts.
pub(crate) struct CachedArgs {
    /// True when `prefix` was written (even with an invalid value).
    pub(crate) prefix_given: bool,
    pub(crate) prefix: Option<LitStr>,
    pub(crate) ttl: Option<Ttl>,
    pub(crate) key: Option<(Span, Template)>,
    pub(crate) skip: Option<(Span, Vec<Ident>)>,
    pub(crate) cache_none: Option<Span>,
    pub(crate) none_ttl: Option<(Span, Ttl)>,
    pub(crate) unless: Option<Expr>,
    pub(crate) cache: Option<Expr>,
    pub(crate) version: Option<u32>,
    /// `near = false`: never served by (or kept in) the near cache.
    pub(crate) near: Option<bool>,
    pub(crate) krate: TokenStream,
    pub(crate) no_companions: bool,
}

/// Everything `#[invalidates(...)]` accepts.
pub(crate) struct InvalidatesArgs {
    pub(crate) keys: Vec<Template>,
    /// `get_customer(customer.id)`: the key a `#[cached]` function's
    /// `_cache_key` companion computes for these arguments.
    pub(crate) calls: Vec<syn::ExprCall>,
    pub(crate) prefixes: Vec<LitStr>,
    pub(crate) cache: Option<Expr>,
    /// `outbox = tx`: the transaction or connection the invalidation is
    /// recorded through, in the same transaction as the body's write.
    pub(crate) outbox: Option<(Span, Expr)>,
    /// `fail_closed`: refuse the write while invalidations cannot be delivered.
    pub(crate) fail_closed: Option<Span>,
    pub(crate) krate: TokenStream,
    /// True when nothing (no key, no prefix) was given, even erroneously.
    pub(crate) empty: bool,
}

/// Parses `#[cached(...)]`'s arguments; errors go to `cx`.
pub(crate) fn parse_cached(tokens: TokenStream, cx: &Ctxt) -> CachedArgs {
    let mut prefix = Attr::none("prefix");
    let mut ttl = Attr::none("ttl");
    let mut key = Attr::none("key");
    let mut skip = Attr::none("skip");
    let mut cache_none = Attr::none("cache_none");
    let mut none_ttl = Attr::none("none_ttl");
    let mut near = Attr::none("near");
    let mut unless = Attr::none("unless");
    let mut cache = Attr::none("cache");
    let mut version = Attr::none("version");
    let mut krate = Attr::none("crate");
    let mut no_companions = Attr::none("no_companions");

    parse_list(tokens, cx, |input| {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::prefix) {
            let name: kw::prefix = input.parse()?;
            let value = parse_value(input)?;
            prefix.set(cx, name, prefix_literal(&value, cx));
        } else if lookahead.peek(kw::ttl) {
            let name: kw::ttl = input.parse()?;
            let value = parse_value(input)?;
            ttl.set(cx, name, parse_ttl("ttl", value, cx));
        } else if lookahead.peek(kw::key) {
            let name: kw::key = input.parse()?;
            let value = parse_value(input)?;
            let template = string_literal(
                &value,
                cx,
                "`key` must be a string literal template, e.g. key = \"{id}\" or key = \"{customer.id}\"",
            )
            .and_then(|lit| template::parse(&lit, cx));
            key.set(cx, name, template);
        } else if lookahead.peek(kw::skip) {
            let name: kw::skip = input.parse()?;
            if input.peek(Token![=]) {
                return Err(input.error("write skip(a, b), not skip = ..."));
            }
            let content;
            syn::parenthesized!(content in input);
            let idents = content.parse_terminated(Ident::parse_skip_arg, Token![,])?;
            skip.set(cx, name, Some(idents.into_iter().collect::<Vec<_>>()));
        } else if lookahead.peek(kw::cache_none) {
            let name: kw::cache_none = input.parse()?;
            reject_value(input, "cache_none", "cache_none")?;
            cache_none.set(cx, name, Some(()));
        } else if lookahead.peek(kw::none_ttl) {
            let name: kw::none_ttl = input.parse()?;
            let value = parse_value(input)?;
            none_ttl.set(cx, name, parse_ttl("none_ttl", value, cx));
        } else if lookahead.peek(kw::unless) {
            let name: kw::unless = input.parse()?;
            let value = parse_value(input)?;
            unless.set(cx, name, Some(value));
        } else if lookahead.peek(kw::cache) {
            let name: kw::cache = input.parse()?;
            let value = parse_value(input)?;
            cache.set(cx, name, Some(value));
        } else if lookahead.peek(kw::version) {
            let name: kw::version = input.parse()?;
            let value = parse_value(input)?;
            version.set(cx, name, parse_version(&value, cx));
        } else if lookahead.peek(kw::near) {
            let name: kw::near = input.parse()?;
            let value = parse_value(input)?;
            near.set(cx, name, parse_bool_arg("near", &value, cx));
        } else if lookahead.peek(Token![crate]) {
            let name: Token![crate] = input.parse()?;
            let path = parse_crate_path(input)?;
            krate.set(cx, name, Some(path));
        } else if lookahead.peek(kw::no_companions) {
            let name: kw::no_companions = input.parse()?;
            reject_value(input, "no_companions", "no_companions")?;
            no_companions.set(cx, name, Some(()));
        } else if input.peek(Ident) {
            return Err(unknown_argument(input, "cached", CACHED_ARGS));
        } else {
            return Err(lookahead.error());
        }
        Ok(())
    });

    CachedArgs {
        prefix_given: prefix.is_set(),
        prefix: prefix.get(),
        ttl: ttl.get(),
        key: key.get_with_span(),
        skip: skip.get_with_span(),
        cache_none: cache_none.get_with_span().map(|(span, ())| span),
        none_ttl: none_ttl.get_with_span(),
        unless: unless.get(),
        cache: cache.get(),
        version: version.get(),
        near: near.get(),
        krate: krate.get().unwrap_or_else(default_crate),
        no_companions: no_companions.is_set(),
    }
}

/// Parses `#[invalidates(...)]`'s arguments; errors go to `cx`.
pub(crate) fn parse_invalidates(tokens: TokenStream, cx: &Ctxt) -> InvalidatesArgs {
    let empty = tokens.is_empty();
    let mut keys = Vec::new();
    let mut calls = Vec::new();
    let mut prefixes: Vec<LitStr> = Vec::new();
    let mut cache = Attr::none("cache");
    let mut outbox = Attr::none("outbox");
    let mut fail_closed = Attr::none("fail_closed");
    let mut krate = Attr::none("crate");

    parse_list(tokens, cx, |input| {
        let lookahead = input.lookahead1();
        if lookahead.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            if let Some(t) = template::parse(&lit, cx) {
                check_invalidation_key(&t, cx);
                keys.push(t);
            }
        } else if lookahead.peek(kw::prefix) {
            input.parse::<kw::prefix>()?;
            let value = parse_value(input)?;
            if let Some(lit) = prefix_literal(&value, cx) {
                if prefixes.iter().any(|p| p.value() == lit.value()) {
                    cx.error_spanned_by(
                        &lit,
                        format!("prefix \"{}\" is listed twice", lit.value()),
                    );
                } else {
                    prefixes.push(lit);
                }
            }
        } else if lookahead.peek(kw::cache) {
            let name: kw::cache = input.parse()?;
            let value = parse_value(input)?;
            cache.set(cx, name, Some(value));
        } else if lookahead.peek(kw::outbox) {
            let name: kw::outbox = input.parse()?;
            let value = parse_value(input)?;
            outbox.set(cx, name, Some((name.span, value)));
        } else if lookahead.peek(kw::fail_closed) {
            let name: kw::fail_closed = input.parse()?;
            reject_value(input, "fail_closed", "fail_closed")?;
            fail_closed.set(cx, name, Some(name.span));
        } else if lookahead.peek(Token![crate]) {
            let name: Token![crate] = input.parse()?;
            let path = parse_crate_path(input)?;
            krate.set(cx, name, Some(path));
        } else if let Some(call) = parse_call(input) {
            calls.push(call);
        } else if input.peek(Ident) {
            let fork = input.fork();
            let ident: Ident = fork.parse()?;
            if ident == "key" || ident == "keys" {
                return Err(syn::Error::new(
                    ident.span(),
                    "#[invalidates] takes the key templates directly, e.g. #[invalidates(\"customer:{id}\")]",
                ));
            }
            return Err(unknown_argument(input, "invalidates", INVALIDATES_ARGS));
        } else {
            return Err(lookahead.error());
        }
        Ok(())
    });

    InvalidatesArgs {
        keys,
        calls,
        prefixes,
        cache: cache.get(),
        outbox: outbox.get(),
        fail_closed: fail_closed.get(),
        krate: krate.get().unwrap_or_else(default_crate),
        empty,
    }
}

/// `path(args)` (`get_customer(id)`, `Self::view::<Summary>(id)`): a call
/// of a `#[cached]` function naming one of its keys. Consumes the input
/// only when it is one.
fn parse_call(input: ParseStream<'_>) -> Option<syn::ExprCall> {
    if !(input.peek(Ident) || input.peek(Token![Self])) {
        return None;
    }
    let fork = input.fork();
    let call = match fork.parse::<Expr>() {
        Ok(Expr::Call(call)) if matches!(&*call.func, Expr::Path(p) if p.qself.is_none()) => call,
        _ => return None,
    };
    if !(fork.is_empty() || fork.peek(Token![,])) {
        return None;
    }
    input.advance_to(&fork);
    Some(call)
}

/// An invalidation key is a full logical key: a literal prefix, a `:`, the
/// rest.
fn check_invalidation_key(t: &Template, cx: &Ctxt) {
    let prefix = match t.parts.first() {
        Some(template::Part::Lit(s)) => s.split_once(':').map(|(p, _)| p),
        _ => None,
    };
    match prefix {
        Some(p) if !p.is_empty() => {
            if let Some(msg) = prefix_problem(p) {
                cx.error_spanned_by(&t.lit, format!("the key's prefix: {msg}"));
            }
        }
        _ => {
            let hint = if t.placeholders().next().is_none() && !t.lit.value().contains(':') {
                format!(
                    "; to drop every key of the prefix write prefix = \"{}\"",
                    t.lit.value()
                )
            } else {
                String::new()
            };
            cx.error_spanned_by(
                &t.lit,
                format!(
                    "an invalidation key is a full key \"prefix:rest\" starting with a literal \
                     prefix, e.g. \"customer:{{id}}\"{hint}"
                ),
            );
        }
    }
}

fn default_crate() -> TokenStream {
    quote!(::cache_core)
}

/// Runs `one` for each comma-separated argument; an argument whose parsing
/// fails is reported and skipped up to the next top-level comma.
fn parse_list(
    tokens: TokenStream,
    cx: &Ctxt,
    mut one: impl FnMut(ParseStream<'_>) -> syn::Result<()>,
) {
    let parser = |input: ParseStream<'_>| {
        while !input.is_empty() {
            if let Err(e) = one(input) {
                cx.syn_error(e);
                skip_to_comma(input)?;
            }
            if input.is_empty() {
                break;
            }
            if let Err(e) = input.parse::<Token![,]>() {
                cx.syn_error(e);
                skip_to_comma(input)?;
                let _ = input.parse::<Option<Token![,]>>()?;
            }
        }
        Ok(())
    };
    if let Err(e) = parser.parse2(tokens) {
        cx.syn_error(e);
    }
}

fn skip_to_comma(input: ParseStream<'_>) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tt, next)) = rest.token_tree() {
            if matches!(&tt, TokenTree::Punct(p) if p.as_char() == ',') {
                return Ok(((), rest));
            }
            rest = next;
        }
        Ok(((), rest))
    })
}

/// `= <expr>`.
fn parse_value(input: ParseStream<'_>) -> syn::Result<Expr> {
    input.parse::<Token![=]>()?;
    input.parse()
}

fn reject_value(input: ParseStream<'_>, name: &str, example: &str) -> syn::Result<()> {
    if input.peek(Token![=]) || input.peek(syn::token::Paren) {
        Err(input.error(format!(
            "`{name}` is a flag and takes no value: write just `{example}`"
        )))
    } else {
        Ok(())
    }
}

/// `= path` or `= "path"` (serde's spelling).
fn parse_crate_path(input: ParseStream<'_>) -> syn::Result<TokenStream> {
    input.parse::<Token![=]>()?;
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        let path: syn::Path = lit.parse()?;
        Ok(path.into_token_stream())
    } else {
        let path = input.call(syn::Path::parse_mod_style)?;
        Ok(path.into_token_stream())
    }
}

fn unknown_argument(input: ParseStream<'_>, mac: &str, known: &[&str]) -> syn::Error {
    let ident: Ident = match input.parse() {
        Ok(i) => i,
        Err(e) => return e,
    };
    let name = ident.to_string();
    let suggestion = known
        .iter()
        .map(|k| (edit_distance(&name, k), *k))
        .filter(|&(d, k)| d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default();
    let list = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    syn::Error::new(
        ident.span(),
        format!("unknown argument `{name}` for #[{mac}]{suggestion}\nexpected one of: {list}"),
    )
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn string_literal(value: &Expr, cx: &Ctxt, msg: &str) -> Option<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s.clone()),
        other => {
            cx.error_spanned_by(other, msg);
            None
        }
    }
}

/// What is wrong with a prefix, if anything.
pub(crate) fn prefix_problem(p: &str) -> Option<String> {
    if p.is_empty() {
        return Some("the prefix can't be empty".to_owned());
    }
    if let Some(c) = p
        .chars()
        .find(|c| matches!(c, '*' | '?' | '[' | ']' | ':' | '\\' | '{' | '}') || c.is_whitespace())
    {
        let shown = if c.is_whitespace() {
            "whitespace".to_owned()
        } else {
            format!("`{c}`")
        };
        return Some(format!(
            "a prefix can't contain {shown}: it is the first segment of every key, and `*`, `?`, \
             `[`, `]`, `:`, `\\`, braces and whitespace would break invalidation by prefix; use \
             letters, digits, `_`, `-` or `.`, e.g. \"customer\""
        ));
    }
    None
}

fn prefix_literal(value: &Expr, cx: &Ctxt) -> Option<LitStr> {
    let lit = string_literal(
        value,
        cx,
        "`prefix` must be a string literal, e.g. prefix = \"customer\"",
    )?;
    if let Some(msg) = prefix_problem(&lit.value()) {
        cx.error_spanned_by(&lit, msg);
        return None;
    }
    Some(lit)
}

fn parse_ttl(name: &str, value: Expr, cx: &Ctxt) -> Option<Ttl> {
    let whole_seconds = format!(
        "`{name}` is a whole number of seconds (at least 1), e.g. {name} = 3600, or an expression of type Duration, e.g. {name} = Duration::from_millis(1500)"
    );
    match &value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => {
            if !matches!(int.suffix(), "" | "u8" | "u16" | "u32" | "u64" | "usize") {
                cx.error_spanned_by(int, &whole_seconds);
                return None;
            }
            match int.base10_parse::<u64>() {
                Ok(0) => {
                    cx.error_spanned_by(
                        int,
                        format!("`{name} = 0` would expire entries immediately; {whole_seconds}"),
                    );
                    None
                }
                Ok(secs) => Some(Ttl::Secs(secs, int.span())),
                Err(_) => {
                    cx.error_spanned_by(
                        int,
                        format!("`{name}` is too large for u64 seconds; {whole_seconds}"),
                    );
                    None
                }
            }
        }
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) if matches!(&**expr, Expr::Lit(_)) => {
            cx.error_spanned_by(
                &value,
                format!("a negative {name} can't be used; {whole_seconds}"),
            );
            None
        }
        Expr::Lit(_) => {
            cx.error_spanned_by(&value, &whole_seconds);
            None
        }
        _ => Some(Ttl::Expr(Box::new(value))),
    }
}

fn parse_bool_arg(name: &str, value: &Expr, cx: &Ctxt) -> Option<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Some(b.value),
        other => {
            cx.error_spanned_by(other, format!("`{name}` is `true` or `false`"));
            None
        }
    }
}

fn parse_version(value: &Expr, cx: &Ctxt) -> Option<u32> {
    let msg = "`version` is an integer literal, e.g. version = 2; bump it when the cached type changes shape";
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) if matches!(int.suffix(), "" | "u8" | "u16" | "u32") => {
            let v = int.base10_parse::<u32>().ok();
            if v.is_none() {
                cx.error_spanned_by(int, msg);
            }
            v
        }
        other => {
            cx.error_spanned_by(other, msg);
            None
        }
    }
}

/// Parsing of one `skip(...)` entry: an identifier or `self`.
trait ParseSkipArg: Sized {
    fn parse_skip_arg(input: ParseStream<'_>) -> syn::Result<Self>;
}

impl ParseSkipArg for Ident {
    fn parse_skip_arg(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(Token![self]) {
            let s: Token![self] = input.parse()?;
            return Ok(Ident::new("self", s.span));
        }
        input.parse::<Ident>().map_err(|e| {
            syn::Error::new(
                e.span(),
                "skip(...) takes argument names, e.g. skip(db, logger)",
            )
        })
    }
}
