/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * crr: closed-loop connection-per-request client for accel bench.
 *
 *     crr ADDRESS PORT SECONDS [PATH]
 *
 * For SECONDS, one at a time: socket, connect, send a GET with "Connection: close", read to
 * EOF, close. Each cycle is timed whole, so the latency includes connection set-up, which is
 * where capture costs (wrk's latency starts after connect). Prints one JSON object:
 * connections, errors, non_2xx, seconds, p50_us, p99_us.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* One cycle; 0 ok, 1 answered but not 2xx, -1 failed. */
static int cycle(const struct sockaddr_in *server, const char *request, size_t length)
{
	char buffer[65536];
	struct timeval timeout = {.tv_sec = 5};
	int fd = socket(AF_INET, SOCK_STREAM, 0), status = -1, first = 1;
	ssize_t n;

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
	if (connect(fd, (const struct sockaddr *)server, sizeof(*server)) != 0 ||
	    send(fd, request, length, MSG_NOSIGNAL) != (ssize_t)length)
		goto out;
	while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) {
		if (first) {  /* "HTTP/1.1 200 ..." */
			status = n >= 12 && buffer[9] == '2' ? 0 : 1;
			first = 0;
		}
	}
	if (n < 0)
		status = -1;
out:
	close(fd);
	return status;
}

int main(int argc, char **argv)
{
	struct sockaddr_in server = {.sin_family = AF_INET};
	char request[512];
	double seconds, start, end, *samples;
	size_t capacity = 1 << 16, count = 0, errors = 0, non_2xx = 0;

	if (argc < 4 || inet_pton(AF_INET, argv[1], &server.sin_addr) != 1 || (seconds = atof(argv[3])) <= 0) {
		fprintf(stderr, "usage: crr IPV4-ADDRESS PORT SECONDS [PATH]\n");
		return 2;
	}
	server.sin_port = htons((unsigned short)atoi(argv[2]));
	int length = snprintf(request, sizeof(request), "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
			      argc > 4 ? argv[4] : "/", argv[1]);
	samples = malloc(capacity * sizeof(*samples));
	if (!samples)
		return 1;
	start = now();
	end = start + seconds;
	for (double t = start; t < end;) {
		int status = cycle(&server, request, (size_t)length);
		double after = now();

		if (status < 0) {
			errors++;
		} else {
			non_2xx += status;
			if (count == capacity) {
				capacity *= 2;
				samples = realloc(samples, capacity * sizeof(*samples));
				if (!samples)
					return 1;
			}
			samples[count++] = (after - t) * 1e6;
		}
		t = after;
	}
	double elapsed = now() - start;

	qsort(samples, count, sizeof(*samples), by_value);
	printf("{\"connections\": %zu, \"errors\": %zu, \"non_2xx\": %zu, \"seconds\": %.6f, "
	       "\"p50_us\": %.1f, \"p99_us\": %.1f}\n", count, errors, non_2xx, elapsed,
	       count ? samples[count / 2] : 0.0, count ? samples[(size_t)(count * 0.99)] : 0.0);
	return 0;
}
