//! `#[updates(f(args))]`: validation and expansion.
//!
//! The argument is a call of a `#[cached]` function with all of its
//! arguments, as the caller would write it: the entry's key, TTL and tags
//! come from the function's own attribute, and those may use any of its
//! arguments, not only the key's. The call is made (not awaited) before the
//! body runs, so the arguments are taken as they were passed; after the
//! body, the runtime drives it with the update action, which stores the
//! `Ok` value (or drops the entry on `Err`) without running its body.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{ExprCall, Token};

use crate::ctxt::Ctxt;
use crate::func::{Func, ReturnKind};

/// What `#[updates(...)]` accepts.
pub(crate) struct UpdatesArgs {
    call: Option<ExprCall>,
    krate: TokenStream,
}

/// Entry point: `args` are the attribute's tokens, `item` the function.
pub(crate) fn expand(args: TokenStream, item: &TokenStream) -> TokenStream {
    crate::expand::expand_attr_with("updates", args, item, parse, |cx, args, func| {
        check(cx, args, func);
        (cx.error_count() == 0).then(|| generate(args, func))
    })
}

const USAGE: &str = "#[updates] names the `#[cached]` function whose entry the returned value replaces, called with its arguments: #[updates(get_customer(db, customer.id))]";

fn parse(tokens: TokenStream, cx: &Ctxt) -> UpdatesArgs {
    let mut call = None;
    let mut krate = None;
    let parser = |input: ParseStream<'_>| -> syn::Result<()> {
        while !input.is_empty() {
            if input.peek(Token![crate]) {
                input.parse::<Token![crate]>()?;
                krate = Some(crate::attr::parse_crate_path(input)?);
            } else if let Some(c) = crate::invalidates_args::parse_call(input) {
                if call.is_some() {
                    return Err(syn::Error::new(
                        c.span(),
                        "#[updates] replaces the entry of one `#[cached]` function; to drop others as well, add #[invalidates(..)]",
                    ));
                }
                call = Some(c);
            } else {
                return Err(input.error(USAGE));
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(())
    };
    if let Err(e) = parser.parse2(tokens) {
        cx.syn_error(e);
    }
    UpdatesArgs {
        call,
        krate: krate.unwrap_or_else(crate::attr::default_crate),
    }
}

fn check(cx: &Ctxt, args: &UpdatesArgs, func: &Func) {
    match &args.call {
        None => cx.error_at(Span::call_site(), USAGE),
        Some(call) => {
            if call
                .args
                .iter()
                .any(|a| matches!(a, syn::Expr::Range(r) if r.start.is_none() && r.end.is_none()))
            {
                cx.error_spanned_by(
                    &call.args,
                    "#[updates] replaces one entry, so it needs the call's arguments; to drop every entry of the function use #[invalidates(name(..))]",
                );
            }
        }
    }
    if func.return_kind() != ReturnKind::Result {
        cx.error_spanned_by(
            &func.output,
            "#[updates] stores the value the function returns in `Ok`: it must return `Result<T, E>`, with `T` the type the `#[cached]` function caches",
        );
    }
}

/// The path of a free function without type arguments: `#[cached]` gives
/// those a hidden struct of their name, checked here. `None` for methods.
fn free_function(call: &ExprCall) -> Option<&syn::Path> {
    let syn::Expr::Path(path) = &*call.func else {
        return None;
    };
    crate::invalidates::free_function(path)
}

fn generate(args: &UpdatesArgs, func: &Func) -> TokenStream {
    let krate = &args.krate;
    let Some(call) = &args.call else {
        return TokenStream::new();
    };
    let pending = format_ident!("__cache_update", span = Span::mixed_site());
    let output = format_ident!("__cache_output", span = Span::mixed_site());
    let value = format_ident!("__cache_value", span = Span::mixed_site());
    let check = free_function(call).map(|path| {
        let krate = crate::key::respan(krate, call.span());
        let f = format_ident!("__cache_must_be_cached", span = Span::mixed_site());
        quote_spanned!(call.span()=>
            #[allow(dead_code)]
            fn #f() where #path: #krate::__private::CachedPrefix {}
        )
    });
    let body = func.body_future();
    let new_body = quote! {
        #check
        // The call is made now, with the arguments as passed; it is driven
        // (never to its body) after the function's own body.
        let #pending = #call;
        let #output = #body.await;
        match &#output {
            ::core::result::Result::Ok(#value) => {
                #krate::__private::update_store(#pending, ::core::clone::Clone::clone(#value)).await
            }
            ::core::result::Result::Err(_) => #krate::__private::update_drop(#pending).await,
        }
        #output
    };
    func.with_body(&new_body)
}
