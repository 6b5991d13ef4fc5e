//! `#[invalidates(...)]`'s arguments: parsing, and the checks that need
//! nothing but the arguments.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::parse::ParseStream;
use syn::parse::discouraged::Speculative;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Token};

use crate::attr::{
    Attr, INVALIDATES_ARGUMENTS, default_crate, kw, parse_crate_path, parse_list, parse_value,
    prefix_problem, reject_value, unknown_argument,
};
use crate::ctxt::Ctxt;
use crate::template::{self, Template};

/// Everything `#[invalidates(...)]` accepts.
pub(crate) struct InvalidatesArgs {
    pub(crate) keys: Vec<Template>,
    /// `get_customer(customer.id)`: the key a `#[cached]` function's
    /// `_cache_key` companion computes for these arguments.
    pub(crate) calls: Vec<syn::ExprCall>,
    /// `prefix = "search"` or `prefix = SEARCH_CACHE_PREFIX`: string
    /// literals (checked for reserved characters only) or paths to `&str`
    /// constants (resolved and type-checked by the compiler).
    pub(crate) prefixes: Vec<Expr>,
    /// `tags = ["customer:{id}"]`: every value loaded under these tags.
    pub(crate) tags: Option<(Span, Vec<Template>)>,
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

/// Parses `#[invalidates(...)]`'s arguments; errors go to `cx`.
pub(crate) fn parse_invalidates(tokens: TokenStream, cx: &Ctxt) -> InvalidatesArgs {
    let empty = tokens.is_empty();
    let mut keys = Vec::new();
    let mut calls = Vec::new();
    let mut prefixes: Vec<Expr> = Vec::new();
    let mut cache = Attr::none("cache");
    let mut outbox = Attr::none("outbox");
    let mut fail_closed = Attr::none("fail_closed");
    let mut krate = Attr::none("crate");
    let mut tags = Attr::none("tags");

    parse_list(tokens, cx, |input| {
        if input.peek(kw::tags) && input.peek2(Token![=]) {
            let name: kw::tags = input.parse()?;
            let value = parse_value(input)?;
            let templates = crate::loads::tag_list(&value, cx);
            tags.set(cx, name, templates.map(|t| (name.span, t)));
            return Ok(());
        }
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
            if let Some(prefix) = prefix_value(&value, cx) {
                let text = prefix.to_token_stream().to_string();
                if prefixes
                    .iter()
                    .any(|p| p.to_token_stream().to_string() == text)
                {
                    cx.error_spanned_by(&prefix, format!("prefix {text} is listed twice"));
                } else {
                    prefixes.push(prefix);
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
            return Err(unknown_argument(
                input,
                "invalidates",
                INVALIDATES_ARGUMENTS,
            ));
        } else {
            return Err(lookahead.error());
        }
        Ok(())
    });

    InvalidatesArgs {
        keys,
        calls,
        prefixes,
        tags: tags.get(),
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
pub(crate) fn parse_call(input: ParseStream<'_>) -> Option<syn::ExprCall> {
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
                    "; to drop every key of the prefix \"{}\", name the `#[cached]` function that declares it: `function_name(..)`",
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

/// `#[invalidates(prefix = ..)]`: a string literal, or the path of a `&str`
/// constant. A literal is checked for reserved characters only: a proc macro
/// sees one item at a time, so it can't know which prefixes the `#[cached]`
/// functions declare. A path (`SEARCH_CACHE_PREFIX`, the constant `#[cached]`
/// generates) is resolved and type-checked by the compiler, so a typo fails
/// to compile; the docs recommend it, or `search(..)`.
fn prefix_value(value: &Expr, cx: &Ctxt) -> Option<Expr> {
    match value {
        Expr::Path(_) => Some(value.clone()),
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => {
            if let Some(msg) = prefix_problem(&lit.value()) {
                cx.error_spanned_by(lit, msg);
                return None;
            }
            Some(value.clone())
        }
        other => {
            cx.error_spanned_by(
                other,
                "`prefix` takes a string or the path of a `&str` constant, e.g. prefix = \"search\" or prefix = SEARCH_CACHE_PREFIX (the constant `#[cached]` generates for a function `search`, checked by the compiler)",
            );
            None
        }
    }
}
