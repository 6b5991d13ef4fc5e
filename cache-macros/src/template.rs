//! Key templates: `"{id}"`, `"{customer.id}"`, `"{tenant}:{id}"`, literal
//! text, `{{` / `}}` for literal braces.
//!
//! Parsing only knows the template's syntax; which names are valid is decided
//! by the macro that owns the template (its function's arguments).

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::LitStr;

use crate::ctxt::Ctxt;

/// Characters a literal part of a template may not contain: they are glob
/// metacharacters (or the escape character) of the invalidation patterns.
const RESERVED_IN_LITERAL: &[char] = &['*', '?', '[', ']', '\\'];

/// A parsed key template.
pub(crate) struct Template {
    pub(crate) lit: LitStr,
    pub(crate) parts: Vec<Part>,
}

/// One piece of a template.
pub(crate) enum Part {
    /// Literal text, copied verbatim into the key.
    Lit(String),
    /// `{root.field.0}`: an argument (or a field path from one), escaped.
    Placeholder(Placeholder),
}

/// `{root.a.b}`.
pub(crate) struct Placeholder {
    /// First segment: the argument name.
    pub(crate) root: String,
    /// Field path after the root (`a`, `b`, or tuple indices).
    pub(crate) fields: Vec<String>,
    /// Span of the placeholder inside the literal where the compiler can give
    /// one (nightly), else the whole literal.
    pub(crate) span: Span,
    /// The placeholder as written, braces included, for messages.
    pub(crate) text: String,
}

impl Template {
    /// The placeholders, in order.
    pub(crate) fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(ph) => Some(ph),
            Part::Lit(_) => None,
        })
    }

    /// Statements appending this template to the `String` named `buf`:
    /// literals with `push_str`, placeholders with `FastPart::push_to` or
    /// `push_escaped`.
    /// `root` maps an argument name (and the placeholder's span) to the
    /// expression that names it.
    pub(crate) fn push_stmts(
        &self,
        krate: &TokenStream,
        buf: &syn::Ident,
        root: &dyn Fn(&Placeholder) -> TokenStream,
    ) -> TokenStream {
        let stmts = self.parts.iter().map(|part| match part {
            Part::Lit(s) => quote!(#buf.push_str(#s);),
            Part::Placeholder(ph) => {
                let root = root(ph);
                let fields = ph.fields.iter().map(|f| field_tokens(f, ph.span));
                let krate = crate::key::respan(krate, ph.span);
                // Integers and strings skip `core::fmt` (`FastPart`); any
                // other type formats through `Display`, whose bound reports a
                // non-`Display` placeholder at the placeholder.
                quote_spanned! {ph.span=>
                    {
                        #[allow(unused_imports)]
                        use #krate::__private::{ViaDisplay as _, ViaFastPart as _};
                        let __part = &(#root #(.#fields)*);
                        match (&#krate::__private::PartProbe(__part)).fast_part() {
                            ::core::option::Option::Some(fast) => fast.push_to(&mut #buf),
                            ::core::option::Option::None => #krate::__private::push_escaped(&mut #buf, __part),
                        }
                    }
                }
            }
        });
        quote!(#(#stmts)*)
    }

    /// Total length of the literal parts (a capacity hint).
    pub(crate) fn literal_len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Lit(s) => s.len(),
                Part::Placeholder(_) => 16,
            })
            .sum()
    }
}

fn field_tokens(field: &str, span: Span) -> TokenStream {
    if let Ok(index) = field.parse::<u32>() {
        syn::Index { index, span }.into_token_stream()
    } else {
        syn::Ident::new(field, span).into_token_stream()
    }
}

/// Parses `lit` as a key template, pushing every syntax error to `cx`.
/// Returns `None` if there was any error.
pub(crate) fn parse(lit: &LitStr, cx: &Ctxt) -> Option<Template> {
    let value = lit.value();
    let offsets = SourceOffsets::new(lit, &value);
    let errors_before = cx.error_count();
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = value.char_indices().peekable();

    while let Some((start, c)) = chars.next() {
        match c {
            '{' if chars.peek().is_some_and(|&(_, c)| c == '{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek().is_some_and(|&(_, c)| c == '}') => {
                chars.next();
                text.push('}');
            }
            '}' => cx.error_at(
                offsets.span(lit, start, start + 1),
                "unmatched `}` in key template; write `}}` for a literal brace",
            ),
            '{' => {
                let mut end = None;
                for (i, c) in chars.by_ref() {
                    if c == '}' {
                        end = Some(i);
                        break;
                    }
                }
                let Some(end) = end else {
                    cx.error_at(
                        offsets.span(lit, start, value.len()),
                        "unclosed `{` in key template; close the placeholder with `}`, or write `{{` for a literal brace",
                    );
                    break;
                };
                let span = offsets.span(lit, start, end + 1);
                let inner = &value[start + 1..end];
                if let Some(ph) = parse_placeholder(inner, span, cx) {
                    if !text.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Placeholder(ph));
                }
            }
            c if RESERVED_IN_LITERAL.contains(&c) => cx.error_at(
                offsets.span(lit, start, start + c.len_utf8()),
                format!(
                    "`{c}` can't appear in a key template: `*`, `?`, `[`, `]` and `\\` are reserved \
                     so that invalidation patterns match keys exactly (values substituted from \
                     placeholders are escaped)"
                ),
            ),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(Part::Lit(text));
    }
    if parts.is_empty() && cx.error_count() == errors_before {
        cx.error_spanned_by(
            lit,
            "the key template is empty; omit `key` to hash the arguments, or write a constant key such as key = \"all\"",
        );
    }
    (cx.error_count() == errors_before).then(|| Template {
        lit: lit.clone(),
        parts,
    })
}

fn parse_placeholder(inner: &str, span: Span, cx: &Ctxt) -> Option<Placeholder> {
    let text = format!("{{{inner}}}");
    let trimmed = inner.trim();
    if trimmed.is_empty() {
        cx.error_at(
            span,
            "empty placeholder `{}` in key template: name an argument, e.g. `{id}`, or a field path, e.g. `{customer.id}`",
        );
        return None;
    }
    if let Some((_, spec)) = trimmed.split_once(':') {
        cx.error_at(
            span,
            format!(
                "format specs (`:{spec}`) aren't supported in key templates: values are written with \
                 their `Display` implementation and escaped"
            ),
        );
        return None;
    }
    let mut segments = trimmed.split('.').map(str::trim);
    let root = segments.next().unwrap_or_default();
    let fields: Vec<&str> = segments.collect();
    let root_ok = is_ident(root);
    let fields_ok = fields
        .iter()
        .all(|f| is_ident(f) || (!f.is_empty() && f.bytes().all(|b| b.is_ascii_digit())));
    if !root_ok || !fields_ok {
        cx.error_at(
            span,
            format!(
                "invalid placeholder `{text}`: expected an argument name such as `{{id}}` or a field \
                 path such as `{{customer.id}}`"
            ),
        );
        return None;
    }
    Some(Placeholder {
        root: root.to_owned(),
        fields: fields.into_iter().map(str::to_owned).collect(),
        span,
        text,
    })
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
        && s != "_"
}

/// Maps byte offsets in a string literal's value to offsets in its source
/// text, when they correspond one to one (no escapes).
struct SourceOffsets {
    start: Option<usize>,
}

impl SourceOffsets {
    fn new(lit: &LitStr, value: &str) -> Self {
        let source = lit.token().to_string();
        let start = if source.starts_with('"') {
            Some(1)
        } else if let Some(rest) = source.strip_prefix('r') {
            let hashes = rest.bytes().take_while(|&b| b == b'#').count();
            Some(2 + hashes)
        } else {
            None
        };
        let start = start.filter(|&s| source.get(s..s + value.len()) == Some(value));
        SourceOffsets { start }
    }

    /// The span of `value[from..to]`, or the literal's span where the
    /// compiler can't subspan (stable Rust) or the literal has escapes.
    fn span(&self, lit: &LitStr, from: usize, to: usize) -> Span {
        self.start
            .and_then(|s| lit.token().subspan(s + from..s + to))
            .unwrap_or_else(|| lit.span())
    }
}
