//! The end-to-end scenarios of `coap_tests::scenarios`, one test per scenario and pair of a
//! client stack and a server stack: every runtime crate against itself (`coap-async-std`
//! under async-std and under smol), and every client crate against every other server crate.
//! The client-only scenarios run once per client stack. Each test is bounded in time by
//! `coap_tests::stack::bounded`, on loopback sockets only.

use coap_tests::scenarios;
use coap_tests::stack::bounded;
use coap_tests::stacks::{AsyncStd, Blocking, Smol, Tokio};

/// One test per scenario that needs a client stack `$c` and a server stack `$s`.
macro_rules! pair_tests {
    ($c:ty, $s:ty) => {
        pair_tests!(
            $c,
            $s;
            every_method_reaches_its_handler,
            request_builder_options_arrive,
            unknown_paths_and_methods,
            handler_errors_and_panics,
            slow_handlers_get_separate_responses,
            deferred_responses_through_a_responder,
            well_known_core_lists_routes_with_filtering,
            catch_all_routes_and_etags,
            large_bodies_both_ways,
            observe_notifications_and_active_cancel,
            dropping_an_observation_ends_it,
            observing_what_cannot_be_observed,
            pending_lists_and_cancel_by_id,
            thousands_of_concurrent_requests,
            graceful_shutdown_finishes_what_is_under_way,
            shutdown_by_handles_and_ping,
            server_handle_sends_from_the_server_socket,
            ipv6_and_dual_stack_clients,
            proxying_forward_and_reverse,
            multicast_requests_reach_group_members,
            observing_through_a_proxy,
        );
    };
    ($c:ty, $s:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                bounded(scenarios::$name::<$c, $s>);
            }
        )*
    };
}

/// One test per scenario that needs only a client stack `$c`.
macro_rules! client_tests {
    ($c:ty) => {
        client_tests!(
            $c;
            uri_errors_are_reported,
            closed_port_fails_fast_through_icmp,
            silent_peer_times_out,
            a_reset_is_reported_as_such,
            dropped_requests_leave_no_state,
            multicast_request_collects_until_its_window_closes,
        );
    };
    ($c:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                bounded(scenarios::$name::<$c>);
            }
        )*
    };
}

/// Modules of tests: `client_to_server` for each pair, `client_alone` for each client.
macro_rules! matrix {
    ($($pair:ident: $c:ty => $s:ty;)*) => {
        $(
            mod $pair {
                use super::*;
                pair_tests!($c, $s);
            }
        )*
    };
}

matrix! {
    tokio_to_tokio: Tokio => Tokio;
    async_std_to_async_std: AsyncStd => AsyncStd;
    smol_to_smol: Smol => Smol;
    blocking_to_blocking: Blocking => Blocking;
    tokio_to_async_std: Tokio => AsyncStd;
    tokio_to_blocking: Tokio => Blocking;
    async_std_to_tokio: AsyncStd => Tokio;
    async_std_to_blocking: AsyncStd => Blocking;
    blocking_to_tokio: Blocking => Tokio;
    blocking_to_async_std: Blocking => AsyncStd;
}

mod tokio_client {
    use super::*;
    client_tests!(Tokio);
}

mod async_std_client {
    use super::*;
    client_tests!(AsyncStd);
}

mod smol_client {
    use super::*;
    client_tests!(Smol);
}

mod blocking_client {
    use super::*;
    client_tests!(Blocking);
}
