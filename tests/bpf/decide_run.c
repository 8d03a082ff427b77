/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
#include "decide.h"
/*
 * The datapath's capture decisions (bpf/decide.h) in a program BPF_PROG_RUN can run: an XDP
 * program, for XDP's test run takes any packet and returns what the program returns. The
 * question is not in the packet but in `decide_requests` (so that its layout is in the object's
 * BTF, checked against the test's mirror); the answer is the return value: a VERDICT_*, or
 * NO_POD. The maps are the datapath's own (accel.h), filled by the datapath's own code.
 *
 * Compiled after bpf/lookups.c, as the datapath is: bcc rewrites map access only in the main
 * source.
 */

#define DIRECTION_OUTBOUND 0  /* decide(): a connect or datagram leaving the pod */
#define DIRECTION_INBOUND  1  /* decide_inbound(): a new TCP connection arriving */
#define NO_POD 100

struct decide_request {
	__u64 netns;
	struct accel_flow flow;  /* outbound: as connect4 fills it; inbound: dst is the client's address */
	__u32 direction;
	__u32 pad;
};

BPF_ARRAY(decide_requests, struct decide_request, 1);

int decide_run(struct xdp_md *ctx)
{
	int zero = 0;
	struct decide_request *request = decide_requests.lookup(&zero);

	if (!request)
		return NO_POD;
	struct accel_pod *pod = pod_of(request->netns);

	if (!pod)
		return NO_POD;
	struct accel_flow flow = request->flow;  /* decide() writes into it */

	if (request->direction == DIRECTION_INBOUND)
		return decide_inbound(request->netns, pod, flow.dst, flow.v4, flow.port);
	return decide(request->netns, pod, &flow);
}
