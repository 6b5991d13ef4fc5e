//! `#[invalidates(...)]`: validation and expansion.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::cached::resolve_handle;
use crate::ctxt::Ctxt;
use crate::func::Func;
use crate::invalidates_args::{self, InvalidatesArgs};
use crate::key;

/// Entry point: `args` are the attribute's tokens, `item` the function.
pub(crate) fn expand(args: TokenStream, item: &TokenStream) -> TokenStream {
    crate::expand::expand_attr_with(
        "invalidates",
        args,
        item,
        invalidates_args::parse_invalidates,
        |cx, args, func| {
            check(cx, args, func);
            (cx.error_count() == 0).then(|| generate(args, func))
        },
    )
}

fn check(cx: &Ctxt, args: &InvalidatesArgs, func: &Func) {
    if let Some((span, _)) = &args.outbox
        && func.return_kind() != crate::func::ReturnKind::Result
    {
        cx.error_at(
            *span,
            "`outbox = ...` reports a failure to record the invalidation through the function's error: the function must return `Result<T, E>` with `E: From<cache_core::outbox::OutboxError>`",
        );
    }
    if let Some(span) = args.fail_closed
        && func.return_kind() != crate::func::ReturnKind::Result
    {
        cx.error_at(
            span,
            "`fail_closed` refuses the write through the function's error: the function must return `Result<T, E>` with `E: From<cache_core::WriteRefused>`",
        );
    }
    if let Some((span, tags)) = &args.tags {
        crate::loads::check_tags(tags, func, cx, true);
        if args.outbox.is_some() {
            cx.error_at(
                *span,
                "`tags` are not recorded in the outbox yet: invalidate the tags in a function of their own, or list the keys",
            );
        }
    }
    if args.empty {
        cx.error_at(
            Span::call_site(),
            "#[invalidates] needs at least one key or prefix, e.g. #[invalidates(\"customer:{id}\")] or #[invalidates(search(..))]",
        );
    }
    for call in &args.calls {
        if is_rest(call) && call.args.len() != 1 {
            cx.error_spanned_by(
                &call.args,
                "`..` stands alone: `name(..)` drops every entry of `name` (its prefix); to drop one entry, pass all the key's arguments",
            );
        }
    }
    for template in &args.keys {
        for ph in template.placeholders() {
            if ph.root == "self" {
                if !func.is_method {
                    cx.error_at(
                        ph.span,
                        format!("`{}`: this function has no `self`", ph.text),
                    );
                }
            } else if func.find_arg(&ph.root).is_none() {
                cx.error_at(
                    ph.span,
                    format!(
                        "`{}` in the key template names no argument: there is no argument `{}`; {}",
                        ph.text,
                        ph.root,
                        func.arg_names()
                    ),
                );
            }
        }
    }
}

/// The path of a free function without type arguments (`get_item`,
/// `repo::get_item`): `#[cached]` gives those a hidden struct of their
/// name. `None` for methods (`Self::..`) and generic instantiations.
pub(crate) fn free_function(path: &syn::ExprPath) -> Option<&syn::Path> {
    let segments = &path.path.segments;
    let plain = path.qself.is_none()
        && segments.first().is_some_and(|s| s.ident != "Self")
        && segments
            .iter()
            .all(|s| matches!(s.arguments, syn::PathArguments::None));
    plain.then_some(&path.path)
}

/// `f(..)`.
fn is_rest(call: &syn::ExprCall) -> bool {
    call.args.iter().any(|a| {
        matches!(
            a,
            syn::Expr::Range(syn::ExprRange {
                start: None,
                end: None,
                ..
            })
        )
    })
}

fn generate(args: &InvalidatesArgs, func: &Func) -> TokenStream {
    let krate = &args.krate;
    let buf = key::buf_ident();
    let guard = format_ident!("__cache_guard", span = Span::mixed_site());
    let output = format_ident!("__cache_output", span = Span::mixed_site());

    let keys = args.keys.iter().map(|t| {
        let spec = key::KeySpec::Template(t);
        let capacity = key::capacity(&spec, 0);
        let stmts = key::rest_stmts(&spec, None, krate, key::Access::Local);
        quote!({
            let mut #buf = ::std::string::String::with_capacity(#capacity);
            #stmts
            #buf
        })
    });
    // `get_customer(id)`: the key `get_customer_cache_key(&id)` computes
    // (a wrong name, argument count or type is the compiler's error on it).
    // `get_customer(..)`: every entry of `get_customer`, its prefix.
    let (rest_calls, calls): (Vec<_>, Vec<_>) = args.calls.iter().partition(|c| is_rest(c));
    let fn_prefixes = rest_calls.iter().map(|call| {
        let mut path = match &*call.func {
            syn::Expr::Path(p) => p.clone(),
            _ => unreachable!("parse_call takes paths only"),
        };
        if let Some(target) = free_function(&path) {
            // The hidden struct `#[cached]` gives a free function.
            let krate = key::respan(krate, call.span());
            return quote_spanned!(call.span()=> <#target as #krate::__private::CachedPrefix>::PREFIX);
        }
        if let Some(last) = path.path.segments.last_mut() {
            let upper = last
                .ident
                .to_string()
                .trim_start_matches("r#")
                .to_uppercase();
            last.ident = format_ident!("{}_CACHE_PREFIX", upper, span = last.ident.span());
            // The prefix is shared by every instantiation.
            last.arguments = syn::PathArguments::None;
        }
        quote_spanned!(call.span()=> #path)
    });
    let calls = calls.into_iter().map(|call| {
        let args = call
            .args
            .iter()
            .map(|arg| quote_spanned!(arg.span()=> &(#arg)));
        if let syn::Expr::Path(path) = &*call.func
            && let Some(target) = free_function(path)
        {
            // Through the hidden struct of the function: a typo suggests
            // the function's name, wrong arguments are one error naming
            // the attribute.
            let krate = key::respan(krate, call.span());
            // The arity is fixed here, so a wrong count is the trait's
            // error (naming the attribute), not an inference of the one impl.
            // The struct is named in a nested function's bound: a typo there
            // gets no "missing a type parameter" suggestion aimed at the
            // user's function (the nested one's generics are the macro's).
            let holes = call.args.iter().map(|_| quote!(_));
            let f = format_ident!("__cache_key_of", span = Span::mixed_site());
            let a = format_ident!("__CacheArgs", span = Span::mixed_site());
            return quote_spanned!(call.span()=> {
                fn #f<#a>(args: #a) -> ::std::string::String
                where
                    #target: #krate::__private::KeyOf<#a>,
                {
                    <#target as #krate::__private::KeyOf<#a>>::key_of(args)
                }
                #f::<(#(#holes,)*)>((#(#args,)*))
            });
        }
        let mut companion = (*call.func).clone();
        if let syn::Expr::Path(path) = &mut companion
            && let Some(last) = path.path.segments.last_mut()
        {
            last.ident = format_ident!("{}_cache_key", last.ident, span = last.ident.span());
        }
        quote_spanned!(call.span()=> #companion(#(#args),*))
    });
    let prefixes = &args.prefixes;
    let handle = resolve_handle(args.cache.as_ref(), krate);
    let body = func.body_future();

    let cache = format_ident!("__cache_handle", span = Span::mixed_site());
    let key_list = format_ident!("__cache_keys", span = Span::mixed_site());
    let prefix_list = format_ident!("__cache_prefixes", span = Span::mixed_site());
    // `outbox = tx`: the invalidation is recorded through `tx` before the
    // body writes through it, so it commits or rolls back with the write.
    let record = args.outbox.as_ref().map(|(span, outbox)| {
        let failed = format_ident!("__cache_outbox_error", span = Span::mixed_site());
        quote_spanned! {*span=>
            if let ::core::result::Result::Err(#failed) = #krate::__private::outbox_record(
                #cache.as_ref(),
                &mut *(#outbox),
                &#key_list,
                #prefix_list,
            )
            .await
            {
                return ::core::result::Result::Err(::core::convert::From::from(#failed));
            }
        }
    });
    // `fail_closed`: no write while its invalidation cannot be delivered.
    let refuse = args.fail_closed.map(|span| {
        let refused = format_ident!("__cache_refused", span = Span::mixed_site());
        quote_spanned! {span=>
            if let ::core::result::Result::Err(#refused) =
                #krate::__private::refuse_when_undeliverable(
                    #cache.as_ref(),
                    &#key_list,
                    #prefix_list,
                )
            {
                return ::core::result::Result::Err(::core::convert::From::from(#refused));
            }
        }
    });
    let make_guard = match &args.tags {
        None => quote!(#krate::__private::invalidation(#cache, #key_list, #prefix_list)),
        Some((_, tags)) => {
            let tags = crate::loads::tag_exprs(tags, krate);
            quote!(#krate::__private::invalidation_with_tags(
                #cache,
                #key_list,
                #prefix_list,
                ::std::vec![#(#tags),*],
            ))
        }
    };
    let new_body = quote! {
        let #cache = #handle;
        let #key_list: ::std::vec::Vec<::std::string::String> =
            ::std::vec![#(#keys,)* #(#calls,)*];
        let #prefix_list: &'static [&'static str] = const { &[#(#prefixes,)* #(#fn_prefixes,)*] };
        #refuse
        #record
        let #guard = #make_guard;
        let #output = #body.await;
        #guard.finish().await;
        #output
    };
    func.with_body(&new_body)
}
