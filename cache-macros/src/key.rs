//! Code generation for cache keys, shared by `#[cached]` (its key and its
//! `_cache_key` companion) and `#[invalidates]`.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::Ident;

use crate::template::{Placeholder, Template};

/// Where a key comes from.
pub(crate) enum KeySpec<'a> {
    /// Default: the stable hash of these arguments (in order).
    Hash(Vec<&'a Ident>),
    /// `key = "..."`.
    Template(&'a Template),
}

/// How an argument is reached from the code computing the key.
#[derive(Clone, Copy)]
pub(crate) enum Access<'a> {
    /// In the function itself: the argument is a local of its own type `T`.
    Local,
    /// In the companion: arguments for which the function returns true are
    /// parameters of type `&T` (the others keep their reference type).
    Companion(&'a dyn Fn(&Ident) -> bool),
}

/// The identifier of the key buffer in generated code.
pub(crate) fn buf_ident() -> Ident {
    format_ident!("__cache_k", span = Span::mixed_site())
}

/// The identifier of a placeholder's root (the argument, or `self`), with
/// the placeholder's span so it resolves to the function's argument.
pub(crate) fn placeholder_root(ph: &Placeholder) -> TokenStream {
    if ph.root == "self" {
        quote_spanned!(ph.span=> self)
    } else {
        let ident = Ident::new(&ph.root, ph.span);
        quote!(#ident)
    }
}

/// `tokens` with every span set to `span`, so that a compiler error about
/// the generated code they start (a path to the runtime, say) points at the
/// user's code rather than at the attribute.
pub(crate) fn respan(tokens: &TokenStream, span: Span) -> TokenStream {
    tokens
        .clone()
        .into_iter()
        .map(|tt| match tt {
            TokenTree::Group(g) => {
                let mut group = Group::new(g.delimiter(), respan(&g.stream(), span));
                group.set_span(span);
                TokenTree::Group(group)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

/// Statements appending the key's "rest" (after `prefix:`) to the buffer.
pub(crate) fn rest_stmts(
    spec: &KeySpec<'_>,
    version: Option<u32>,
    krate: &TokenStream,
    access: Access<'_>,
) -> TokenStream {
    let buf = buf_ident();
    let version = version.map(|v| {
        let s = format!("v{v}:");
        quote!(#buf.push_str(#s);)
    });
    let body = match spec {
        // Each argument is hashed on its own, at its own span, then the
        // tuple of those hashes is hashed. The hash goes through an
        // autoref probe: a `Serialize` argument gets its hash (a `String`),
        // any other type a marker that fails a bound of a trait declared
        // here, whose message names the argument and the `skip(..)` that
        // leaves it out: one error per argument, and no serde paths.
        KeySpec::Hash(args) => {
            let items = args.iter().map(|ident| {
                let span = ident.span();
                let arg = match access {
                    Access::Companion(borrowed) if borrowed(ident) => quote!(#ident),
                    _ => quote_spanned!(span=> &#ident),
                };
                let krate = respan(krate, span);
                if let Access::Companion(_) = access {
                    // The function itself reports a non-`Serialize`
                    // argument; its companion stays quiet (one error).
                    return quote_spanned! {span=> {
                        #[allow(unused_imports)]
                        use #krate::__private::{KeyViaMissing as _, KeyViaSerialize as _};
                        #krate::__private::KeyHash::into_key_hash(
                            (&#krate::__private::KeyProbe(#arg)).key_hash(),
                        )
                    }};
                }
                let message = format!(
                    "cache key argument `{ident}` does not implement `serde::Serialize`"
                );
                let note = format!(
                    "the default key hashes every argument; add `skip({ident})` to the attribute to leave `{ident}` out of the key, or derive `serde::Serialize` for its type"
                );
                let check = format_ident!("__CacheKeyArg", span = Span::mixed_site());
                let part = format_ident!("__cache_key_part", span = Span::mixed_site());
                quote_spanned! {span=> {
                    #[diagnostic::on_unimplemented(
                        message = #message,
                        label = "not `serde::Serialize`",
                        note = #note
                    )]
                    trait #check {
                        fn hash(self) -> ::std::string::String;
                    }
                    impl #check for ::std::string::String {
                        fn hash(self) -> ::std::string::String {
                            self
                        }
                    }
                    fn #part<T: #check>(hash: T) -> ::std::string::String {
                        hash.hash()
                    }
                    #[allow(unused_imports)]
                    use #krate::__private::{KeyViaMissing as _, KeyViaSerialize as _};
                    #part((&#krate::__private::KeyProbe(#arg)).key_hash())
                }}
            });
            let tuple = if args.is_empty() {
                quote!(())
            } else {
                quote!((#(#items,)*))
            };
            quote!(#buf.push_str(&#krate::__private::hash_args(&#tuple));)
        }
        KeySpec::Template(t) => match access {
            Access::Local => t.push_stmts(krate, &buf, &placeholder_root),
            // A companion parameter `x: &T` stands for the argument `x: T`:
            // dereference it so the value (and any error about it) has the
            // same type as in the function.
            Access::Companion(borrowed) => t.push_stmts(krate, &buf, &|ph: &Placeholder| {
                let root = placeholder_root(ph);
                if borrowed(&Ident::new(&ph.root, ph.span)) {
                    quote_spanned!(ph.span=> (*#root))
                } else {
                    root
                }
            }),
        },
    };
    quote!(#version #body)
}

/// A capacity hint for the key buffer.
pub(crate) fn capacity(spec: &KeySpec<'_>, extra: usize) -> usize {
    extra
        + match spec {
            KeySpec::Hash(_) => 32,
            KeySpec::Template(t) => t.literal_len(),
        }
}

/// For a function with type parameters, the statement appending the
/// instantiation's segment (`{16 hex digits}:`, a hash of the parameters'
/// `type_name`s) right after the prefix, so that `view::<Summary>` and
/// `view::<CustomerRef>` never share an entry; nothing otherwise.
pub(crate) fn type_key_stmt(func: &crate::func::Func, krate: &TokenStream) -> TokenStream {
    let params: Vec<&Ident> = func
        .item
        .sig
        .generics
        .type_params()
        .map(|p| &p.ident)
        .collect();
    if params.is_empty() {
        return TokenStream::new();
    }
    let buf = buf_ident();
    quote! {
        #krate::__private::push_type_key(
            &mut #buf,
            &[#(::core::any::type_name::<#params>()),*],
        );
    }
}

/// The length of what [`type_key_stmt`] appends.
pub(crate) fn type_key_len(func: &crate::func::Func) -> usize {
    if func.item.sig.generics.type_params().next().is_some() {
        17
    } else {
        0
    }
}
