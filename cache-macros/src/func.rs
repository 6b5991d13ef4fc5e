//! What the macros need to know about the annotated function: its arguments,
//! its shape (`async fn`, or the non-async fn that `#[async_trait]` leaves
//! behind), and the type its future resolves to.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Expr, ExprAsync, ExprCall, FnArg, GenericArgument, ItemFn, Pat, PathArguments, ReturnType,
    Stmt, Type, TypeParamBound,
};

use crate::ctxt::Ctxt;

/// One argument of the function.
pub(crate) struct Arg {
    pub(crate) kind: ArgKind,
    /// Its type (`Self` for receivers).
    pub(crate) ty: Type,
    /// True when the type is `&mut T`.
    pub(crate) mut_ref: bool,
}

pub(crate) enum ArgKind {
    /// `self`, `&self`, `self: Arc<Self>`, ...
    Receiver,
    /// `name: T` (also `mut name`, `ref name`).
    Ident(syn::Ident),
    /// `_: T`: unusable in the body, so never part of the key.
    Wild,
    /// A destructuring pattern.
    Pattern(Box<Pat>),
}

impl Arg {
    pub(crate) fn ident(&self) -> Option<&syn::Ident> {
        match &self.kind {
            ArgKind::Ident(i) => Some(i),
            _ => None,
        }
    }

    /// True for `&T` and `&self`: the body's `async move` copies the
    /// reference, so the generated code may borrow through it meanwhile.
    pub(crate) fn is_shared_ref(&self) -> bool {
        matches!(&self.ty, Type::Reference(r) if r.mutability.is_none())
    }
}

/// How the function produces its future.
pub(crate) enum Shape {
    /// `async fn f(..) -> R { body }`.
    Async,
    /// `fn f(..) -> Pin<Box<dyn Future<Output = R> + ..>> { ..; Box::pin(async move { body }) }`
    /// as written by `#[async_trait]`: the async block is the body.
    AsyncTrait {
        /// Index of the statement holding the `Box::pin(..)` call.
        stmt: usize,
    },
}

/// The analysed function.
pub(crate) struct Func {
    pub(crate) item: ItemFn,
    pub(crate) shape: Shape,
    pub(crate) args: Vec<Arg>,
    /// The type the function's future resolves to (`()` when none is written).
    pub(crate) output: Type,
    /// True when the function has a `self` receiver.
    pub(crate) is_method: bool,
}

/// What the return type looks like, judged by its last path segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReturnKind {
    Result,
    Option,
    Other,
}

impl Func {
    /// Analyses `item`; reports a non-async function to `cx` (and still
    /// returns the analysis, so the other checks run too).
    pub(crate) fn analyze(item: ItemFn, cx: &Ctxt, macro_name: &str) -> Func {
        let args = item
            .sig
            .inputs
            .iter()
            .map(|input| match input {
                FnArg::Receiver(r) => Arg {
                    kind: ArgKind::Receiver,
                    ty: (*r.ty).clone(),
                    // `&mut self`, `self: &mut Self`, `self: Pin<&mut Self>`.
                    mut_ref: has_mut_ref(&r.ty.to_token_stream()),
                },
                FnArg::Typed(pt) => {
                    let kind = match &*pt.pat {
                        Pat::Ident(pi) if pi.subpat.is_none() => ArgKind::Ident(pi.ident.clone()),
                        Pat::Wild(_) => ArgKind::Wild,
                        other => ArgKind::Pattern(Box::new(other.clone())),
                    };
                    let mut_ref = matches!(&*pt.ty, Type::Reference(r) if r.mutability.is_some());
                    Arg {
                        kind,
                        ty: (*pt.ty).clone(),
                        mut_ref,
                    }
                }
            })
            .collect();
        let is_method = item.sig.receiver().is_some();

        let (shape, output) = if item.sig.asyncness.is_some() {
            let output = match &item.sig.output {
                ReturnType::Default => syn::parse_quote!(()),
                ReturnType::Type(_, ty) => (**ty).clone(),
            };
            (Shape::Async, output)
        } else if let Some((stmt, output)) = async_trait_shape(&item) {
            (Shape::AsyncTrait { stmt }, output)
        } else {
            cx.error_spanned_by(
                item.sig.fn_token,
                format!(
                    "#[{macro_name}] works on `async fn`s only: make this function `async` \
                     (in a trait impl, `#[async_trait]` or native `async fn` both work)"
                ),
            );
            (Shape::Async, syn::parse_quote!(()))
        };

        Func {
            item,
            shape,
            args,
            output,
            is_method,
        }
    }

    /// Whether the generated code can hold a borrow of `expr` while the
    /// body's `async move` block takes the arguments: true when every
    /// argument `expr` names is a shared reference or unused by the body.
    /// Decided on tokens, so it errs towards "no" (the caller then clones).
    pub(crate) fn can_borrow_across_body(&self, expr: &TokenStream) -> bool {
        if !matches!(self.shape, Shape::Async) {
            return false;
        }
        // An identifier, or inside a literal: `format!("{name}")` captures
        // `name` from inside a string.
        let (body_idents, body_literals) = words(&self.item.block.to_token_stream());
        let mentions = |name: &str| {
            body_idents.iter().any(|i| i == name) || body_literals.iter().any(|l| l.contains(name))
        };
        words(expr).0.iter().all(|name| {
            let arg = if name == "self" {
                self.args
                    .iter()
                    .find(|a| matches!(a.kind, ArgKind::Receiver))
            } else {
                self.find_arg(name)
            };
            match arg {
                None => true,
                Some(arg) => arg.is_shared_ref() || !mentions(name),
            }
        })
    }

    pub(crate) fn find_arg(&self, name: &str) -> Option<&Arg> {
        self.args
            .iter()
            .find(|a| a.ident().is_some_and(|i| i == name))
    }

    /// Names of the arguments a template can use, for messages.
    pub(crate) fn arg_names(&self) -> String {
        let names: Vec<String> = self
            .args
            .iter()
            .filter_map(Arg::ident)
            .map(|i| format!("`{i}`"))
            .collect();
        if names.is_empty() {
            "the function has no named arguments".to_owned()
        } else {
            format!("its arguments are {}", names.join(", "))
        }
    }

    pub(crate) fn return_kind(&self) -> ReturnKind {
        match last_segment(&self.output)
            .map(|s| s.ident.to_string())
            .as_deref()
        {
            Some("Result") => ReturnKind::Result,
            Some("Option") => ReturnKind::Option,
            _ => ReturnKind::Other,
        }
    }

    /// The span to blame for a non-serde payload: the first generic argument
    /// of `Result<T, E>` / `Option<T>`, else the whole return type.
    pub(crate) fn payload_span(&self) -> Span {
        if self.return_kind() != ReturnKind::Other
            && let Some(seg) = last_segment(&self.output)
            && let PathArguments::AngleBracketed(args) = &seg.arguments
            && let Some(GenericArgument::Type(t)) = args.args.first()
        {
            return t.span();
        }
        self.output.span()
    }

    /// Re-emits the function with `body` (tokens of an expression evaluating
    /// to the function's output, in async context) as its new body.
    pub(crate) fn with_body(&self, body: &TokenStream) -> TokenStream {
        let ItemFn {
            attrs,
            vis,
            sig,
            block,
            ..
        } = &self.item;
        match self.shape {
            Shape::Async => quote! {
                #(#attrs)*
                #vis #sig {
                    #body
                }
            },
            Shape::AsyncTrait { stmt } => {
                let mut block = (**block).clone();
                if let Stmt::Expr(Expr::Call(call), _) = &mut block.stmts[stmt] {
                    let async_attrs = match &call.args[0] {
                        Expr::Async(a) => a.attrs.clone(),
                        _ => Vec::new(),
                    };
                    call.args[0] = syn::parse_quote! {
                        #(#async_attrs)* async move { #body }
                    };
                }
                quote! {
                    #(#attrs)*
                    #vis #sig #block
                }
            }
        }
    }

    /// Whether the body mentions `name` (an identifier, or inside a
    /// literal: `format!("{name}")`). Decided on tokens, so it errs
    /// towards "yes".
    pub(crate) fn body_mentions(&self, name: &str) -> bool {
        let (idents, literals) = words(&self.item.block.to_token_stream());
        idents.iter().any(|i| i == name) || literals.iter().any(|l| l.contains(name))
    }

    /// The statements of the original body (with the fake return edge), for
    /// an `async move { .. }` block of the macro's own.
    pub(crate) fn body_statements(&self) -> TokenStream {
        let future = self.body_future();
        let mut tokens = future.into_iter();
        match (tokens.next(), tokens.next(), tokens.next()) {
            (Some(_), Some(_), Some(proc_macro2::TokenTree::Group(block))) => block.stream(),
            _ => TokenStream::new(),
        }
    }

    /// The original body as an `async move { .. }` expression.
    pub(crate) fn body_future(&self) -> TokenStream {
        match self.shape {
            Shape::Async => {
                let block = &self.item.block;
                // The body is checked against the declared return type as
                // without the attribute (tracing-attributes' fake return
                // edge): the first `return` the compiler meets has that type,
                // so the tail and every `return` coerce to it
                // (`Err(Box::new(io_error))` to `Box<dyn Error>`, `Box<[T; N]>`
                // to `Box<[T]>`) instead of fixing the block's type themselves.
                let ret = &self.output;
                if contains_impl_trait(ret) {
                    return quote!(async move #block);
                }
                let fake = syn::Ident::new("__cache_fake_return", Span::mixed_site());
                let edge = quote_spanned! {ret.span()=>
                    #[allow(
                        unknown_lints,
                        unreachable_code,
                        clippy::diverging_sub_expression,
                        clippy::let_unit_value,
                        clippy::unreachable,
                        clippy::let_with_type_underscore,
                        clippy::empty_loop,
                        clippy::needless_return
                    )]
                    if false {
                        let #fake: #ret = loop {};
                        return #fake;
                    }
                };
                let stmts = &block.stmts;
                quote!(async move { #edge #(#stmts)* })
            }
            Shape::AsyncTrait { stmt } => match &self.item.block.stmts[stmt] {
                Stmt::Expr(Expr::Call(call), _) => call.args[0].to_token_stream(),
                _ => unreachable!("checked by async_trait_shape"),
            },
        }
    }
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(tp) if tp.qself.is_none() => tp.path.segments.last(),
        Type::Group(g) => last_segment(&g.elem),
        Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

/// Detects `#[async_trait]`'s output: a non-async fn whose last statement is
/// `Box::pin(async move { .. })` and whose return type is
/// `Pin<Box<dyn Future<Output = R> + ..>>`. Returns the statement's index
/// and `R`.
fn async_trait_shape(item: &ItemFn) -> Option<(usize, Type)> {
    let (index, stmt) = item.block.stmts.iter().enumerate().next_back()?;
    let Stmt::Expr(Expr::Call(ExprCall { func, args, .. }), None) = stmt else {
        return None;
    };
    let Expr::Path(path) = &**func else {
        return None;
    };
    let segments: Vec<String> = path
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    if !segments.ends_with(&["Box".to_owned(), "pin".to_owned()]) || args.len() != 1 {
        return None;
    }
    let Expr::Async(ExprAsync {
        capture: Some(_), ..
    }) = &args[0]
    else {
        return None;
    };
    let ReturnType::Type(_, ty) = &item.sig.output else {
        return None;
    };
    future_output(ty).map(|out| (index, out))
}

/// `R` from `Pin<Box<dyn Future<Output = R> + ..>>`.
fn future_output(ty: &Type) -> Option<Type> {
    let pin = last_segment(ty)?;
    if pin.ident != "Pin" {
        return None;
    }
    let boxed = single_type_arg(&pin.arguments)?;
    let boxed = last_segment(boxed)?;
    if boxed.ident != "Box" {
        return None;
    }
    let Type::TraitObject(obj) = single_type_arg(&boxed.arguments)? else {
        return None;
    };
    obj.bounds.iter().find_map(|b| {
        let TypeParamBound::Trait(t) = b else {
            return None;
        };
        let seg = t.path.segments.last()?;
        if seg.ident != "Future" {
            return None;
        }
        let PathArguments::AngleBracketed(args) = &seg.arguments else {
            return None;
        };
        args.args.iter().find_map(|a| match a {
            GenericArgument::AssocType(at) if at.ident == "Output" => Some(at.ty.clone()),
            _ => None,
        })
    })
}

fn single_type_arg(args: &PathArguments) -> Option<&Type> {
    let PathArguments::AngleBracketed(args) = args else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}

/// The text of every identifier and of every literal in `tokens`,
/// including inside groups (macro calls too).
fn words(tokens: &TokenStream) -> (Vec<String>, Vec<String>) {
    fn walk(tokens: &TokenStream, idents: &mut Vec<String>, literals: &mut Vec<String>) {
        for tt in tokens.clone() {
            match tt {
                proc_macro2::TokenTree::Ident(i) => idents.push(i.to_string()),
                proc_macro2::TokenTree::Literal(l) => literals.push(l.to_string()),
                proc_macro2::TokenTree::Group(g) => walk(&g.stream(), idents, literals),
                proc_macro2::TokenTree::Punct(_) => {}
            }
        }
    }
    let (mut idents, mut literals) = (Vec::new(), Vec::new());
    walk(tokens, &mut idents, &mut literals);
    (idents, literals)
}

/// Whether `ty` mentions `impl Trait` (not nameable in a `let`).
pub(crate) fn contains_impl_trait(ty: &Type) -> bool {
    ty.to_token_stream()
        .into_iter()
        .any(|tt| contains_impl(&tt))
}

fn contains_impl(tt: &proc_macro2::TokenTree) -> bool {
    match tt {
        proc_macro2::TokenTree::Ident(i) => i == "impl",
        proc_macro2::TokenTree::Group(g) => g.stream().into_iter().any(|t| contains_impl(&t)),
        _ => false,
    }
}

/// Whether `tokens` contain `&mut` (at any depth).
fn has_mut_ref(tokens: &TokenStream) -> bool {
    let mut after_and = false;
    for tt in tokens.clone() {
        match &tt {
            proc_macro2::TokenTree::Punct(p) if p.as_char() == '&' => {
                after_and = true;
                continue;
            }
            proc_macro2::TokenTree::Ident(i) if after_and && i == "mut" => return true,
            proc_macro2::TokenTree::Group(g) if has_mut_ref(&g.stream()) => return true,
            _ => {}
        }
        after_and = false;
    }
    false
}
