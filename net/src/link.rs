//! rtnetlink plumbing shared by the bindings: netlink work runs on a
//! current-thread tokio runtime on a thread inside the target network
//! namespace, so the netlink socket is made there.

use std::path::Path;

/// Run `work` with a netlink handle inside the namespace at `netns`.
pub(crate) fn run<T: Send + 'static, F>(
    netns: Option<&Path>,
    work: impl FnOnce(rtnetlink::Handle) -> F + Send + 'static,
) -> std::io::Result<T>
where
    F: std::future::Future<Output = Result<T, rtnetlink::Error>>,
{
    crate::netns::run_in(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        rt.block_on(async move {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            work(handle)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
    })
}

/// The index of link `name`, if it exists.
pub(crate) async fn index(
    h: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<u32>, rtnetlink::Error> {
    use futures_util::TryStreamExt;
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // "No such device" comes back as an error.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}
