//! RPCs crid does not implement yet answer UNIMPLEMENTED, naming the RPC; never a fake success.
//! Each later issue moves its RPCs out of these lists into real implementations.

/// The status for an RPC that is not implemented yet.
pub fn unimplemented(rpc: &'static str) -> tonic::Status {
    crate::error::DaemonError::Unimplemented(rpc).into()
}

/// Expands to trait methods (in the shape `#[tonic::async_trait]` gives the trait) that
/// answer UNIMPLEMENTED.
macro_rules! unimplemented_rpcs {
    ($($method:ident ($rpc:literal): $request:ty => $response:ty;)*) => {$(
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _request: tonic::Request<$request>,
        ) -> std::pin::Pin<Box<
            dyn std::future::Future<Output = Result<tonic::Response<$response>, tonic::Status>>
                + Send + 'async_trait,
        >>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Err($crate::server::unimplemented::unimplemented($rpc)) })
        }
    )*};
}

pub(crate) use unimplemented_rpcs;
