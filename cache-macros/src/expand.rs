//! The driver both attributes share (as axum-macros' `expand_attr_with`):
//! parse the arguments and the function, check them, and generate only if
//! nothing was wrong; otherwise report every error at once and re-emit the
//! function unchanged, so its callers get no follow-up errors.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ItemFn;

use crate::ctxt::Ctxt;
use crate::func::Func;

/// Runs one attribute: `parse_args` reads its arguments, `check_and_generate`
/// checks them against the function and returns the expansion, which is used
/// only when no error was reported.
pub(crate) fn expand_attr_with<A>(
    macro_name: &str,
    args: TokenStream,
    item: &TokenStream,
    parse_args: impl FnOnce(TokenStream, &Ctxt) -> A,
    check_and_generate: impl FnOnce(&Ctxt, &A, &Func) -> Option<TokenStream>,
) -> TokenStream {
    let cx = Ctxt::new();
    let args = parse_args(args, &cx);
    let Some(func) = parse_fn(item, &cx, macro_name) else {
        return with_errors(cx, item);
    };
    let func = Func::analyze(func, &cx, macro_name);
    let generated = check_and_generate(&cx, &args, &func);
    match (cx.check(), generated) {
        (Ok(()), Some(tokens)) => tokens,
        (Err(e), _) => {
            let errors = e.to_compile_error();
            quote!(#errors #item)
        }
        (Ok(()), None) => item.clone(),
    }
}

/// Parses the annotated item as a function with a body.
fn parse_fn(item: &TokenStream, cx: &Ctxt, macro_name: &str) -> Option<ItemFn> {
    if let Ok(f) = syn::parse2::<ItemFn>(item.clone()) {
        return Some(f);
    }
    let hint = if syn::parse2::<syn::TraitItemFn>(item.clone()).is_ok() {
        " (put it on the method in the `impl`, not on the trait's declaration)"
    } else {
        ""
    };
    cx.error_at(
        Span::call_site(),
        format!("#[{macro_name}] goes on an `async fn` with a body{hint}"),
    );
    None
}

/// Reports all errors, then re-emits the item unchanged.
fn with_errors(cx: Ctxt, item: &TokenStream) -> TokenStream {
    let errors = cx
        .check()
        .err()
        .map(|e| e.to_compile_error())
        .unwrap_or_default();
    quote!(#errors #item)
}
