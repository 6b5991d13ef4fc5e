//! `#[cached(...)]`: validation and expansion.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, Ident, Type};

use crate::attr::{self, CachedArgs, Ttl};
use crate::ctxt::Ctxt;
use crate::func::{ArgKind, Func, ReturnKind, Shape};
use crate::key::{self, Access, KeySpec};

/// Entry point: `args` are the attribute's tokens, `item` the function.
pub(crate) fn expand(args: TokenStream, item: &TokenStream) -> TokenStream {
    crate::expand::expand_attr_with(
        "cached",
        args,
        item,
        attr::parse_cached,
        |cx, args, func| {
            let spec = check(cx, args, func);
            (cx.error_count() == 0).then(|| generate(args, func, &spec))
        },
    )
}

/// Validates the arguments against the function; returns how the key is
/// built (meaningful only when no error was reported).
fn check<'a>(cx: &Ctxt, args: &'a CachedArgs, func: &'a Func) -> KeySpec<'a> {
    if !args.prefix_given {
        cx.error_at(
            Span::call_site(),
            "missing `prefix`: every cached function needs a key prefix, e.g. #[cached(prefix = \"customer\")]",
        );
    }

    args.loads.check(cx, func);

    if crate::func::contains_impl_trait(&func.output) {
        cx.error_spanned_by(
            &func.output,
            "#[cached] stores what this function returns and decodes it back on a hit, which needs a concrete type: an `impl Trait` return type can't be cached; return the concrete type (e.g. `Vec<u64>` rather than `impl Iterator<Item = u64>`)",
        );
    }

    if let (Some((span, _)), None) = (&args.none_ttl, args.cache_none) {
        cx.error_at(
            *span,
            "`none_ttl` only applies together with `cache_none` (None results are not stored otherwise); add `cache_none` or remove `none_ttl`",
        );
    }
    if let Some(span) = args.cache_none
        && func.return_kind() != ReturnKind::Option
    {
        cx.error_at(
            span,
            "`cache_none` applies to functions returning `Option<T>`; this function's return type doesn't end in `Option<..>` (a type alias hides it: spell out Option<T>)",
        );
    }

    if let Some(receiver) = func.item.sig.receiver()
        && func
            .args
            .iter()
            .any(|a| matches!(a.kind, ArgKind::Receiver) && a.mut_ref)
    {
        cx.error_spanned_by(
            receiver,
            "#[cached] can't go on a method taking `self` by `&mut`: on a hit the body doesn't run, so its changes to `self` would silently be skipped; take `&self` (use interior mutability for state the body must update), or cache a `&self` method that this one calls",
        );
    }

    let mut skipped: Vec<&Ident> = Vec::new();
    if let Some((span, skip)) = &args.skip {
        if args.key.is_some() {
            cx.error_at(
                *span,
                "`skip(..)` only shapes the default hashed key; with `key = \"..\"` the key is exactly the template, so remove `skip`",
            );
        }
        for ident in skip {
            if skipped.contains(&ident) {
                cx.error_spanned_by(ident, format!("`{ident}` is already skipped"));
            } else if ident != "self" && func.find_arg(&ident.to_string()).is_none() {
                cx.error_spanned_by(
                    ident,
                    format!(
                        "skip({ident}): the function has no argument named `{ident}`; {}",
                        func.arg_names()
                    ),
                );
            }
            skipped.push(ident);
        }
    }

    if let Some((_, template)) = &args.key {
        for ph in template.placeholders() {
            if ph.root == "self" {
                cx.error_at(
                    ph.span,
                    format!(
                        "`{}`: the key is built from the arguments only (`self` is never part of a cached key); pass what the key needs as an argument",
                        ph.text
                    ),
                );
                continue;
            }
            match func.find_arg(&ph.root) {
                None => cx.error_at(
                    ph.span,
                    format!(
                        "`{}` in the key template names no argument: there is no argument `{}`; {}",
                        ph.text,
                        ph.root,
                        func.arg_names()
                    ),
                ),
                Some(arg) if arg.mut_ref => cx.error_at(
                    ph.span,
                    format!(
                        "`{}` uses `{}`, a `&mut` argument: a cached call may skip the body, so a key built from data the body mutates is a bug; key on an immutable argument instead",
                        ph.text, ph.root
                    ),
                ),
                Some(_) => {}
            }
        }
        KeySpec::Template(template)
    } else {
        let mut hashed = Vec::new();
        for arg in &func.args {
            match &arg.kind {
                ArgKind::Receiver | ArgKind::Wild => {}
                ArgKind::Ident(ident) if skipped.contains(&ident) => {}
                ArgKind::Ident(ident) if arg.mut_ref => cx.error_spanned_by(
                    ident,
                    format!(
                        "`{ident}` is a `&mut` argument and can't be part of the cache key: a cached call may skip the body, so it wouldn't see the mutation; add skip({ident}) if the result doesn't depend on it"
                    ),
                ),
                ArgKind::Ident(ident) => hashed.push(ident),
                ArgKind::Pattern(pat) => cx.error_spanned_by(
                    pat,
                    "the default key hashes the arguments by name, and this argument is a pattern: bind it to a name (e.g. `pair: (u32, u32)`) or give a key template",
                ),
            }
        }
        KeySpec::Hash(hashed)
    }
}

fn generate(args: &CachedArgs, func: &Func, spec: &KeySpec<'_>) -> TokenStream {
    let krate = &args.krate;
    let prefix = args.prefix.as_ref().expect("checked");
    let ret = &func.output;
    let buf = key::buf_ident();
    let key_var = format_ident!("__cache_key", span = Span::mixed_site());
    let handle_var = format_ident!("__cache_handle", span = Span::mixed_site());

    let type_key = key::type_key_stmt(func, krate);
    let key_stmts = key::rest_stmts(spec, args.version, krate, Access::Local);
    let capacity = key::capacity(spec, 0) + key::type_key_len(func);

    let mode = match (func.return_kind(), args.cache_none.is_some()) {
        (ReturnKind::Result, _) => quote!(ResultMode),
        (ReturnKind::Option, false) => quote!(OptionMode),
        (ReturnKind::Option, true) => quote!(OptionWithNone),
        (ReturnKind::Other, _) => quote!(PlainMode),
    };
    let mode = quote!(#krate::__private::#mode);
    let payload_span = func.payload_span();
    let assert_storable = {
        let krate = key::respan(krate, payload_span);
        let mode = key::respan(&mode, payload_span);
        quote_spanned! {payload_span=>
            #krate::__private::assert_storable::<#ret, #mode>();
        }
    };

    let bind_handle = bind_cached_handle(args.cache.as_ref(), func, krate, &handle_var);
    let ttl = ttl_option(args.ttl.as_ref(), krate);
    let none_ttl = ttl_option(args.none_ttl.as_ref().map(|(_, t)| t), krate);
    // A sliding TTL is restarted on every hit, which Redis reports as a
    // change of the key: a near copy would be dropped at each hit.
    let near = args.near.unwrap_or(true) && args.loads.sliding.is_none();
    let policy = args.loads.policy(krate);
    let unless = if let Some(expr) = &args.unless {
        // The closure is the macro's (call-site spans, so lints about it
        // don't fire in user code); `result` resolves from the user's tokens.
        let result = Ident::new("result", Span::call_site());
        quote!(move |#result| -> bool { #expr })
    } else {
        quote!(|_| false)
    };
    let (entry, body) = if args.loads.owned() {
        (
            quote!(cached_owned::<#ret, #mode, _, _, _>),
            crate::loads::owned_body(func, krate),
        )
    } else {
        (quote!(cached::<#ret, #mode, _, _>), func.body_future())
    };

    let new_body = quote! {
        #bind_handle
        // The whole storage key (`{namespace}:{prefix}:{rest}`), in a reused buffer.
        let #key_var: #krate::__private::KeyString = {
            let mut #buf = #krate::__private::key_buffer(
                ::core::option::Option::as_ref(&#handle_var),
                #prefix,
                #capacity,
            );
            #type_key
            #key_stmts
            #buf
        };
        #assert_storable
        #krate::__private::#entry(
            #handle_var,
            #prefix,
            #key_var,
            #ttl,
            #none_ttl,
            #unless,
            {
                // Autoref specialization: a `Clone` payload gets a typed copy
                // kept beside the bytes in the memory backend (no decode per hit).
                #[allow(unused_imports)]
                use #krate::__private::{ViaBytes as _, ViaClone as _};
                (&#krate::__private::Probe::<<#mode as #krate::__private::Mode<#ret>>::Stored>::NEW).typed_copy()
            },
            #near,
            #policy,
            #body,
        )
        .await
    };
    let function = func.with_body(&new_body);

    let companion = if args.no_companions || matches!(func.shape, Shape::AsyncTrait { .. }) {
        None
    } else {
        Some(companion(args, func, spec))
    };
    quote!(#function #companion)
}

/// `let <handle_var> = ...;` binding the `Option<__private::Handle>` a
/// `#[cached]` call runs against. `cache = expr` is borrowed for the call
/// when the body cannot move what it borrows (no reference count touched),
/// else cloned; without it, the current cache.
fn bind_cached_handle(
    cache: Option<&Expr>,
    func: &Func,
    krate: &TokenStream,
    handle_var: &Ident,
) -> TokenStream {
    let Some(expr) = cache else {
        return quote!(let #handle_var = #krate::__private::resolve_handle(::core::option::Option::None););
    };
    let (explicit, bind) = bind_explicit(expr, krate);
    if func.can_borrow_across_body(&expr.to_token_stream()) {
        quote! {
            #bind
            let #handle_var = #krate::__private::resolve_borrowed(#explicit);
        }
    } else {
        quote! {
            let #handle_var = {
                #bind
                #krate::__private::resolve_handle(::core::option::Option::Some(#explicit))
            };
        }
    }
}

/// `let __cache_explicit: &Cache = &(expr);`, spanned at `expr` so a type
/// error points at the user's expression; returns the name and the statement.
fn bind_explicit(expr: &Expr, krate: &TokenStream) -> (Ident, TokenStream) {
    let explicit = format_ident!("__cache_explicit", span = Span::mixed_site());
    let bind = quote_spanned! {expr.span()=>
        let #explicit: &#krate::Cache = &(#expr);
    };
    (explicit, bind)
}

/// `Option<Cache>` tokens: the explicit `cache = expr`, else the current one.
pub(crate) fn resolve_handle(cache: Option<&Expr>, krate: &TokenStream) -> TokenStream {
    match cache {
        None => quote!(#krate::__private::resolve(::core::option::Option::None)),
        Some(expr) => {
            let (explicit, bind) = bind_explicit(expr, krate);
            quote!({
                #bind
                #krate::__private::resolve(::core::option::Option::Some(#explicit))
            })
        }
    }
}

/// `fn <name>_cache_key(<key args by reference>) -> String`.
fn companion(args: &CachedArgs, func: &Func, spec: &KeySpec<'_>) -> TokenStream {
    let krate = &args.krate;
    let prefix = args.prefix.as_ref().expect("checked");
    let item = &func.item;
    let name = &item.sig.ident;
    let companion_name = format_ident!("{}_cache_key", name);
    let vis = &item.vis;
    let cfgs: Vec<_> = item
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr"))
        .collect();
    // The function's lint allowances cover its companion too (it repeats the
    // key arguments: `#[allow(clippy::too_many_arguments)]` must reach it).
    // `expect` becomes `allow`: the companion may not trip the lint.
    let allows = item.attrs.iter().filter_map(|a| {
        let lints = match &a.meta {
            syn::Meta::List(list) if a.path().is_ident("allow") || a.path().is_ident("expect") => {
                &list.tokens
            }
            _ => return None,
        };
        Some(quote!(#[allow(#lints)]))
    });
    let (_, _, where_clause) = item.sig.generics.split_for_impl();
    let generics = &item.sig.generics;

    let key_args: Vec<&Ident> = match spec {
        KeySpec::Hash(args) => args.clone(),
        KeySpec::Template(t) => func
            .args
            .iter()
            .filter_map(|a| a.ident())
            .filter(|i| t.placeholders().any(|ph| **i == ph.root))
            .collect(),
    };
    // Reference arguments keep their type; others are taken by reference.
    let ty_of = |ident: &Ident| {
        &func
            .find_arg(&ident.to_string())
            .expect("key args are arguments")
            .ty
    };
    let borrowed = |ident: &Ident| !matches!(ty_of(ident), Type::Reference(_));
    let params = key_args.iter().map(|ident| {
        let ty = ty_of(ident);
        match ty {
            Type::Reference(_) => quote!(#ident: #ty),
            Type::ImplTrait(_) | Type::TraitObject(_) => quote!(#ident: &(#ty)),
            _ => quote!(#ident: &#ty),
        }
    });

    let buf = key::buf_ident();
    let head = format!("{}:", prefix.value());
    let capacity = key::capacity(spec, head.len()) + key::type_key_len(func);
    let type_key = key::type_key_stmt(func, krate);
    let rest = key::rest_stmts(spec, args.version, krate, Access::Companion(&borrowed));
    let path = if func.is_method {
        format!("Self::{name}")
    } else {
        name.to_string()
    };
    // `<NAME>_CACHE_PREFIX`, for `#[invalidates(name(..))]`.
    let prefix_const = format_ident!(
        "{}_CACHE_PREFIX",
        name.to_string().trim_start_matches("r#").to_uppercase()
    );
    let key_of = key_of_struct(
        func,
        &key_args,
        krate,
        &companion_name,
        &prefix_const,
        &cfgs,
    );
    let prefix_doc = format!(
        "The key prefix of `{path}` (`\"{}\"`): `#[invalidates({name}(..))]` drops every entry under it.",
        prefix.value()
    );
    // A method may be in a trait impl, which can't hold the companion:
    // the compiler then also reports this item, whose name says the fix.
    let hint = if func.is_method {
        let hint = format_ident!("{}_in_a_trait_impl_needs_cached_no_companions", name);
        quote! {
            #(#cfgs)*
            #[doc(hidden)]
            #[allow(dead_code, non_upper_case_globals)]
            const #hint: () = ();
        }
    } else {
        TokenStream::new()
    };
    let doc = format!(
        "The cache key (`\"{}:...\"`) under which `{path}` stores its result for these arguments.\n\n\
         Generated by `#[cached]`; use it to inspect or delete that entry.",
        prefix.value()
    );

    quote! {
        #(#cfgs)*
        #[doc = #doc]
        #[must_use]
        #(#allows)*
        #[allow(dead_code, unreachable_pub, clippy::trivially_copy_pass_by_ref, clippy::ref_option_ref)]
        #vis fn #companion_name #generics (#(#params),*) -> ::std::string::String #where_clause {
            let mut #buf = ::std::string::String::with_capacity(#capacity);
            #buf.push_str(#head);
            #type_key
            #rest
            #buf
        }
        #(#cfgs)*
        #[doc = #prefix_doc]
        #[allow(dead_code, unreachable_pub)]
        #vis const #prefix_const: &str = #prefix;
        #hint
        #key_of
    }
}

/// For a free, non-generic function: a hidden struct of the function's own
/// name (a type: it shares no namespace with the function) that knows the
/// key and the prefix, which `#[invalidates(name(..))]` names. A typo there
/// then makes the compiler suggest the function's name itself, and
/// arguments that don't match the key are one error that names the
/// attribute and shows the arguments the key takes.
fn key_of_struct(
    func: &Func,
    key_args: &[&Ident],
    krate: &TokenStream,
    companion_name: &Ident,
    prefix_const: &Ident,
    cfgs: &[&syn::Attribute],
) -> TokenStream {
    let item = &func.item;
    let lifetime = quote!('__cache_k);
    let mut tys = Vec::new();
    for ident in key_args {
        let Some(arg) = func.find_arg(&ident.to_string()) else {
            return TokenStream::new();
        };
        let ty = &arg.ty;
        let plain = |t: &Type| {
            !t.to_token_stream()
                .into_iter()
                .any(|tt| mentions_lifetime_or_impl(&tt))
        };
        match ty {
            Type::Reference(r) if r.mutability.is_none() && plain(&r.elem) => {
                let elem = &r.elem;
                tys.push(quote!(&#lifetime #elem));
            }
            Type::Reference(_) | Type::ImplTrait(_) | Type::TraitObject(_) => {
                return TokenStream::new();
            }
            other if plain(other) => tys.push(quote!(&#lifetime #other)),
            _ => return TokenStream::new(),
        }
    }
    if func.is_method || !item.sig.generics.params.is_empty() {
        return TokenStream::new();
    }
    let name = &item.sig.ident;
    let vis = &item.vis;
    let idents = key_args;
    quote! {
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code, unreachable_pub)]
        #vis struct #name {
            _cached: (),
        }
        #(#cfgs)*
        impl<#lifetime> #krate::__private::KeyOf<(#(#tys,)*)> for #name {
            fn key_of((#(#idents,)*): (#(#tys,)*)) -> ::std::string::String {
                #companion_name(#(#idents),*)
            }
        }
        #(#cfgs)*
        impl #krate::__private::CachedPrefix for #name {
            const PREFIX: &'static str = #prefix_const;
        }
    }
}

/// Whether a token is a lifetime (`'a`) or `impl`: such types can't be
/// named in the key struct's impl.
fn mentions_lifetime_or_impl(tt: &proc_macro2::TokenTree) -> bool {
    match tt {
        proc_macro2::TokenTree::Punct(p) => p.as_char() == '\'',
        proc_macro2::TokenTree::Ident(i) => i == "impl",
        proc_macro2::TokenTree::Group(g) => g
            .stream()
            .into_iter()
            .any(|t| mentions_lifetime_or_impl(&t)),
        proc_macro2::TokenTree::Literal(_) => false,
    }
}

/// `Option<Duration>` tokens for a TTL argument.
pub(crate) fn ttl_option(ttl: Option<&Ttl>, krate: &TokenStream) -> TokenStream {
    match ttl {
        None => quote!(::core::option::Option::None),
        Some(Ttl::Secs(secs, span)) => quote_spanned! {*span=>
            ::core::option::Option::Some(#krate::__private::Duration::from_secs(#secs))
        },
        Some(Ttl::Expr(expr)) => {
            let span = expr.span();
            let duration = key::respan(&quote!(#krate::__private::Duration), span);
            let ttl = format_ident!("__cache_ttl", span = Span::mixed_site());
            quote!({
                let #ttl: #duration = #expr;
                ::core::option::Option::Some(#ttl)
            })
        }
    }
}
