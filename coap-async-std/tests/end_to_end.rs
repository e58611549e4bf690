//! What only this crate's tests cover, over real loopback sockets: socket options set through
//! the builder, under async-std's runtime and under smol's. The scenarios every runtime crate
//! shares (methods, options, errors, separate and deferred responses, discovery, block-wise
//! bodies, observe, timeouts, cancellation, shutdown, ...) run against this crate, under both
//! executors, and against the other crates, in the `coap-tests` crate
//! (`tests/end_to_end.rs`).

use coap_async_std::Client;

async fn socket_options_reach_the_socket() {
    let client = Client::builder()
        .recv_buffer_size(1 << 18)
        .send_buffer_size(1 << 17)
        .dscp(46)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    assert!(client.recv_buffer_size().unwrap() >= 1 << 18);
    assert!(client.send_buffer_size().unwrap() >= 1 << 17);
    // DSCP is a 6-bit field.
    let err = Client::builder().dscp(64).bind("127.0.0.1:0").await;
    assert!(err.is_err());
}

#[async_std::test]
async fn socket_options_reach_the_socket_on_async_std() {
    socket_options_reach_the_socket().await;
}

#[test]
fn socket_options_reach_the_socket_on_smol() {
    smol::block_on(socket_options_reach_the_socket());
}
