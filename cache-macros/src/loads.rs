//! `#[cached]`'s arguments about its loads: `fail_safe`,
//! `fail_safe_throttle`, `soft_timeout`, `hard_timeout`, `refresh_ahead`,
//! `jitter`, `tags`, `ttl_from` and `sliding`: their parsing, their checks
//! against the function, and the `Policy` they generate. A function using
//! `soft_timeout` or `refresh_ahead` gets a body that owns what it uses
//! (its loads may outlive the call): see [`owned_body`].

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::ParseStream;
use syn::{Expr, ExprLit, Lit, Token};

use crate::attr::{Attr, Ttl, parse_ttl};
use crate::ctxt::Ctxt;
use crate::func::{ArgKind, Func, ReturnKind, Shape};
use crate::key;
use crate::template::{self, Template};

mod kw {
    syn::custom_keyword!(fail_safe);
    syn::custom_keyword!(fail_safe_throttle);
    syn::custom_keyword!(soft_timeout);
    syn::custom_keyword!(hard_timeout);
    syn::custom_keyword!(refresh_ahead);
    syn::custom_keyword!(jitter);
    syn::custom_keyword!(tags);
    syn::custom_keyword!(ttl_from);
    syn::custom_keyword!(sliding);
}

/// The load arguments of one `#[cached]`, as parsed (each at most once).
pub(crate) struct LoadAttrs {
    fail_safe: Attr<(Span, Ttl)>,
    fail_safe_throttle: Attr<(Span, Ttl)>,
    soft_timeout: Attr<(Span, Ttl)>,
    hard_timeout: Attr<(Span, Ttl)>,
    refresh_ahead: Attr<(Span, f64)>,
    jitter: Attr<(Span, f64)>,
    tags: Attr<(Span, Vec<Template>)>,
    ttl_from: Attr<(Span, Expr)>,
    sliding: Attr<Span>,
}

/// The load arguments of one `#[cached]`.
#[derive(Default)]
pub(crate) struct LoadArgs {
    pub(crate) fail_safe: Option<(Span, Ttl)>,
    fail_safe_throttle: Option<(Span, Ttl)>,
    pub(crate) soft_timeout: Option<(Span, Ttl)>,
    hard_timeout: Option<(Span, Ttl)>,
    pub(crate) refresh_ahead: Option<(Span, f64)>,
    jitter: Option<(Span, f64)>,
    pub(crate) tags: Option<(Span, Vec<Template>)>,
    ttl_from: Option<(Span, Expr)>,
    pub(crate) sliding: Option<Span>,
}

impl LoadAttrs {
    pub(crate) fn new() -> Self {
        LoadAttrs {
            fail_safe: Attr::none("fail_safe"),
            fail_safe_throttle: Attr::none("fail_safe_throttle"),
            soft_timeout: Attr::none("soft_timeout"),
            hard_timeout: Attr::none("hard_timeout"),
            refresh_ahead: Attr::none("refresh_ahead"),
            jitter: Attr::none("jitter"),
            tags: Attr::none("tags"),
            ttl_from: Attr::none("ttl_from"),
            sliding: Attr::none("sliding"),
        }
    }

    /// Parses one argument if it is one of these; `Ok(false)`: it is not.
    pub(crate) fn parse(&mut self, input: ParseStream<'_>, cx: &Ctxt) -> syn::Result<bool> {
        macro_rules! duration {
            ($kw:ident, $field:ident, $name:literal) => {
                if input.peek(kw::$kw) {
                    let name: kw::$kw = input.parse()?;
                    let value = parse_value(input)?;
                    let parsed = parse_ttl($name, value, cx).map(|t| (name.span, t));
                    self.$field.set(cx, name, parsed);
                    return Ok(true);
                }
            };
        }
        duration!(fail_safe_throttle, fail_safe_throttle, "fail_safe_throttle");
        duration!(fail_safe, fail_safe, "fail_safe");
        duration!(soft_timeout, soft_timeout, "soft_timeout");
        duration!(hard_timeout, hard_timeout, "hard_timeout");
        if input.peek(kw::refresh_ahead) {
            let name: kw::refresh_ahead = input.parse()?;
            let value = parse_value(input)?;
            let fraction = fraction(
                &value,
                cx,
                "refresh_ahead",
                0.0,
                1.0,
                "refresh_ahead = 0.8 (a hit past 80% of the TTL reloads the value in the background)",
                false,
            );
            self.refresh_ahead
                .set(cx, name, fraction.map(|f| (name.span, f)));
        } else if input.peek(kw::jitter) {
            let name: kw::jitter = input.parse()?;
            let value = parse_value(input)?;
            let fraction = fraction(
                &value,
                cx,
                "jitter",
                0.0,
                0.5,
                "jitter = 0.1 (each TTL drawn from ±10%)",
                true,
            );
            self.jitter.set(cx, name, fraction.map(|f| (name.span, f)));
        } else if input.peek(kw::tags) {
            let name: kw::tags = input.parse()?;
            let value = parse_value(input)?;
            let templates = tag_templates(&value, cx);
            self.tags.set(cx, name, templates.map(|t| (name.span, t)));
        } else if input.peek(kw::ttl_from) {
            let name: kw::ttl_from = input.parse()?;
            let value = parse_value(input)?;
            self.ttl_from.set(cx, name, Some((name.span, value)));
        } else if input.peek(kw::sliding) {
            let name: kw::sliding = input.parse()?;
            if input.peek(Token![=]) || input.peek(syn::token::Paren) {
                return Err(
                    input.error("`sliding` is a flag and takes no value: write just `sliding`")
                );
            }
            self.sliding.set(cx, name, Some(name.span));
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    pub(crate) fn finish(self) -> LoadArgs {
        LoadArgs {
            fail_safe: self.fail_safe.get(),
            fail_safe_throttle: self.fail_safe_throttle.get(),
            soft_timeout: self.soft_timeout.get(),
            hard_timeout: self.hard_timeout.get(),
            refresh_ahead: self.refresh_ahead.get(),
            jitter: self.jitter.get(),
            tags: self.tags.get(),
            ttl_from: self.ttl_from.get(),
            sliding: self.sliding.get(),
        }
    }
}

fn parse_value(input: ParseStream<'_>) -> syn::Result<Expr> {
    input.parse::<Token![=]>()?;
    input.parse()
}

/// A float literal in `[min, max]` (`min` excluded unless `min_ok`; `max`
/// excluded).
fn fraction(
    value: &Expr,
    cx: &Ctxt,
    name: &str,
    min: f64,
    max: f64,
    example: &str,
    min_ok: bool,
) -> Option<f64> {
    let parsed = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse::<f64>().ok(),
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<f64>().ok(),
        _ => None,
    };
    match parsed {
        // Jitter may reach its bound (the builder's range, 0 to 0.5); a
        // refresh at 100% of the TTL would never happen.
        Some(f) if (f > min || (min_ok && f == min)) && (f < max || (min_ok && f == max)) => {
            Some(f)
        }
        _ => {
            let (low, high) = if min_ok {
                ("from", "up to")
            } else {
                ("above", "and below")
            };
            cx.error_spanned_by(
                value,
                format!("`{name}` is a number {low} {min} {high} {max}, e.g. {example}"),
            );
            None
        }
    }
}

/// `["customer:{id}", ...]`.
pub(crate) fn tag_list(value: &Expr, cx: &Ctxt) -> Option<Vec<Template>> {
    tag_templates(value, cx)
}

/// `["customer:{id}", ...]`.
fn tag_templates(value: &Expr, cx: &Ctxt) -> Option<Vec<Template>> {
    let msg = "`tags` is a list of string literal templates, e.g. tags = [\"customer:{id}\", \"segment:{segment}\"]";
    let Expr::Array(array) = value else {
        cx.error_spanned_by(value, msg);
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for elem in &array.elems {
        match elem {
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => match template::parse(lit, cx) {
                Some(t) => out.push(t),
                None => ok = false,
            },
            other => {
                cx.error_spanned_by(other, msg);
                ok = false;
            }
        }
    }
    if out.is_empty() && ok {
        cx.error_spanned_by(value, msg);
        ok = false;
    }
    ok.then_some(out)
}

/// Checks `tags` templates of `#[cached]` or `#[invalidates]` against the
/// function's arguments (`self` allowed when `allow_self` and a method).
pub(crate) fn check_tags(templates: &[Template], func: &Func, cx: &Ctxt, allow_self: bool) {
    for template in templates {
        for ph in template.placeholders() {
            if ph.root == "self" {
                if !(allow_self && func.is_method) {
                    cx.error_at(
                        ph.span,
                        format!("`{}`: a tag of a cached value is built from the arguments only (`self` is never part of it); pass what the tag needs as an argument", ph.text),
                    );
                }
            } else if func.find_arg(&ph.root).is_none() {
                cx.error_at(
                    ph.span,
                    format!(
                        "`{}` in the tag template names no argument: there is no argument `{}`; {}",
                        ph.text,
                        ph.root,
                        func.arg_names()
                    ),
                );
            }
        }
    }
}

/// `vec![tag strings]` / `[..]` element expressions for `templates`.
pub(crate) fn tag_exprs(templates: &[Template], krate: &TokenStream) -> Vec<TokenStream> {
    let buf = key::buf_ident();
    templates
        .iter()
        .map(|t| {
            let spec = key::KeySpec::Template(t);
            let capacity = key::capacity(&spec, 0);
            let stmts = key::rest_stmts(&spec, None, krate, key::Access::Local);
            quote!({
                let mut #buf = ::std::string::String::with_capacity(#capacity);
                #stmts
                #buf
            })
        })
        .collect()
}

impl LoadArgs {
    /// Whether the body must own what it uses (loads that outlive the call).
    pub(crate) fn owned(&self) -> bool {
        self.soft_timeout.is_some() || self.refresh_ahead.is_some()
    }

    /// Whether any of these arguments was given.
    fn any(&self) -> bool {
        self.fail_safe.is_some()
            || self.fail_safe_throttle.is_some()
            || self.soft_timeout.is_some()
            || self.hard_timeout.is_some()
            || self.refresh_ahead.is_some()
            || self.jitter.is_some()
            || self.tags.is_some()
            || self.ttl_from.is_some()
            || self.sliding.is_some()
    }

    /// Checks the arguments against each other and the function.
    pub(crate) fn check(&self, cx: &Ctxt, func: &Func) {
        if let Some((span, _)) = &self.hard_timeout
            && func.return_kind() != ReturnKind::Result
        {
            cx.error_at(
                *span,
                "`hard_timeout` answers a load that takes too long through the function's error: the function must return `Result<T, E>` with `E: From<cache_core::LoadTimedOut>`",
            );
        }
        if let (Some((span, _)), None) = (&self.fail_safe_throttle, &self.fail_safe) {
            cx.error_at(*span, "`fail_safe_throttle` only applies together with `fail_safe = <max stale>`; add `fail_safe` or remove it");
        }
        if let Some(span) = self.sliding {
            let conflict = [
                ("fail_safe", self.fail_safe.is_some()),
                ("refresh_ahead", self.refresh_ahead.is_some()),
            ];
            for (name, given) in conflict {
                if given {
                    cx.error_at(span, format!("`sliding` restarts the TTL on every hit, and `{name}` works from when the value was stored: use one or the other"));
                }
            }
        }
        if let Some((_, tags)) = &self.tags {
            check_tags(tags, func, cx, false);
        }
        if self.owned() {
            let span = self
                .soft_timeout
                .as_ref()
                .map(|(s, _)| *s)
                .or(self.refresh_ahead.map(|(s, _)| s))
                .unwrap_or_else(Span::call_site);
            if matches!(func.shape, Shape::AsyncTrait { .. }) {
                cx.error_at(span, "`soft_timeout` and `refresh_ahead` finish loads in the background, which `#[async_trait]` methods can't: cache a plain `async fn` that the trait method calls");
            }
            for arg in &func.args {
                if arg.mut_ref
                    && !matches!(arg.kind, ArgKind::Receiver)
                    && let Some(ident) = arg.ident().filter(|i| func.body_mentions(&i.to_string()))
                {
                    cx.error_spanned_by(
                        ident,
                        format!(
                            "`{ident}` is a `&mut` argument, and `soft_timeout`/`refresh_ahead` finish loads in the background, after the caller has its answer: the body can't keep borrowing it mutably; take it by value or by `&`"
                        ),
                    );
                }
                if let (Some(ident), syn::Type::Reference(r)) = (arg.ident(), &arg.ty)
                    && matches!(&*r.elem, syn::Type::ImplTrait(_))
                    && func.body_mentions(&ident.to_string())
                {
                    cx.error_spanned_by(ident, format!("`{ident}: &impl ..` can't be copied for a load in the background (`soft_timeout`, `refresh_ahead`): take a concrete type, or the value by value"));
                }
            }
        }
    }

    /// `Option<&Policy>` tokens: `None` when no load argument was given.
    pub(crate) fn policy(&self, krate: &TokenStream) -> TokenStream {
        if !self.any() {
            return quote!(::core::option::Option::None);
        }
        let duration =
            |d: &Option<(Span, Ttl)>| crate::cached::ttl_option(d.as_ref().map(|(_, t)| t), krate);
        let fail_safe = duration(&self.fail_safe);
        let throttle = duration(&self.fail_safe_throttle);
        let soft = duration(&self.soft_timeout);
        let hard = duration(&self.hard_timeout);
        let timed_out = match &self.hard_timeout {
            None => quote!(::core::option::Option::None),
            Some((span, _)) => {
                let krate = key::respan(krate, *span);
                let e = format_ident!("__cache_timed_out", span = Span::mixed_site());
                quote_spanned! {*span=>
                    ::core::option::Option::Some(|#e| ::core::result::Result::Err(#krate::__private::timed_out(#e)))
                }
            }
        };
        let fraction = |f: &Option<(Span, f64)>| match f {
            None => quote!(::core::option::Option::None),
            Some((_, f)) => quote!(::core::option::Option::Some(#f)),
        };
        let refresh_ahead = fraction(&self.refresh_ahead);
        let jitter = fraction(&self.jitter);
        let sliding = self.sliding.is_some();
        let ttl_from = match &self.ttl_from {
            None => quote!(::core::option::Option::None),
            Some((_, expr)) => quote!(::core::option::Option::Some(#expr)),
        };
        let tags = tag_exprs(self.tags.as_ref().map_or(&[][..], |(_, t)| t), krate);
        quote! {
            ::core::option::Option::Some(&#krate::__private::Policy {
                fail_safe: #fail_safe,
                fail_safe_throttle: #throttle,
                soft_timeout: #soft,
                hard_timeout: #hard,
                timed_out: #timed_out,
                refresh_ahead: #refresh_ahead,
                jitter: #jitter,
                sliding: #sliding,
                ttl_from: #ttl_from,
                tags: &[#(#tags),*],
            })
        }
    }
}

/// The body as a closure making a load that owns what it uses: `self` (a
/// reference receiver) and every reference argument the body mentions are
/// copied (`Clone`/`ToOwned`), by-value arguments move in, so the load can
/// run in the background after the call returned.
pub(crate) fn owned_body(func: &Func, krate: &TokenStream) -> TokenStream {
    let this = format_ident!("__cache_this", span = Span::mixed_site());
    let mut prelude = Vec::new();
    let mut rebinds = Vec::new();
    let mut self_by_ref = false;
    for arg in &func.args {
        match &arg.kind {
            ArgKind::Receiver => {
                if !func.body_mentions("self") {
                    continue;
                }
                if matches!(arg.ty, syn::Type::Reference(_)) {
                    self_by_ref = true;
                    prelude.push(quote!(let #this = #krate::__private::own_self(self);));
                } else {
                    prelude.push(quote!(let #this = self;));
                }
            }
            ArgKind::Ident(ident) if func.body_mentions(&ident.to_string()) => {
                if let syn::Type::Reference(r) = &arg.ty {
                    let owned = format_ident!("__cache_owned_{}", ident, span = Span::mixed_site());
                    let elem = &r.elem;
                    let krate = key::respan(krate, ident.span());
                    prelude.push(quote_spanned! {ident.span()=>
                        let #owned = #krate::__private::own::<#elem>(#ident);
                    });
                    rebinds.push(quote! {
                        let #ident: &#elem = ::core::borrow::Borrow::borrow(&#owned);
                    });
                }
            }
            _ => {}
        }
    }
    let replacement = if self_by_ref {
        quote!((&#this))
    } else {
        quote!(#this)
    };
    let body = replace_self(&func.body_statements(), &replacement);
    quote! {
        move || {
            #(#prelude)*
            async move {
                #(#rebinds)*
                #body
            }
        }
    }
}

/// `tokens` with every `self` (not `self::`) replaced by `with`.
fn replace_self(tokens: &TokenStream, with: &TokenStream) -> TokenStream {
    let mut out = Vec::new();
    let mut iter = tokens.clone().into_iter().peekable();
    while let Some(tt) = iter.next() {
        match tt {
            TokenTree::Ident(ident) if ident == "self" => {
                let path = matches!(iter.peek(), Some(TokenTree::Punct(p)) if p.as_char() == ':');
                if path {
                    out.push(TokenTree::Ident(ident));
                } else {
                    out.extend(with.clone());
                }
            }
            TokenTree::Group(group) => {
                let mut replaced =
                    proc_macro2::Group::new(group.delimiter(), replace_self(&group.stream(), with));
                replaced.set_span(group.span());
                out.push(TokenTree::Group(replaced));
            }
            other => out.push(other),
        }
    }
    out.into_iter().collect()
}
