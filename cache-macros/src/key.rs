//! Code generation for cache keys, shared by `#[cached]` (its key and its
//! `_cache_key` companion) and `#[invalidates]`.

use proc_macro2::{Span, TokenStream};
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
        KeySpec::Hash(args) => {
            let items = args.iter().map(|ident| {
                let arg = match access {
                    Access::Companion(borrowed) if borrowed(ident) => quote!(#ident),
                    _ => quote!(&#ident),
                };
                quote_spanned!(ident.span()=> #krate::__private::key_arg(#arg))
            });
            let tuple = if args.is_empty() {
                quote!(())
            } else {
                quote!((#(#items,)*))
            };
            quote!(#buf.push_str(&#krate::__private::hash_args(&#tuple));)
        }
        KeySpec::Template(t) => t.push_stmts(krate, &buf, &placeholder_root),
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
