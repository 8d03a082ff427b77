/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * churn: short connections at a steady rate, the app closing first, for accel bench.
 *
 *     churn ADDRESS[,ADDRESS...] PORT SECONDS RATE
 *
 * For SECONDS, RATE connections a second, one at a time, round-robin over the IPv4 addresses:
 * socket, connect, send one byte, close. The app closes first, so each connection leaves a
 * socket in TIME_WAIT on its side (60 s): beyond the port range a second for over a minute,
 * every connect needs a source port while the earlier ones still hold theirs. A connection
 * that falls behind the schedule starts at once (the rate is an offer, met if the path keeps
 * up). Prints one JSON object: connections, errors, eaddrnotavail (the kernel found no source
 * port), seconds, rate, connect_p50_us, connect_p99_us (connect() alone).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_ADDRESSES 1024

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void sleep_until(double when)
{
	double left = when - now();

	if (left > 0) {
		struct timespec t = {.tv_sec = (time_t)left, .tv_nsec = (long)((left - (time_t)left) * 1e9)};

		nanosleep(&t, NULL);
	}
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* One connection; 0 ok, else the errno of what failed. `connect_us`: how long connect() took. */
static int connection(const struct sockaddr_in *to, double *connect_us)
{
	struct timeval timeout = {.tv_sec = 5};
	int fd = socket(AF_INET, SOCK_STREAM, 0), error = 0;

	if (fd < 0)
		return errno;
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
	double before = now();

	if (connect(fd, (const struct sockaddr *)to, sizeof(*to)) != 0)
		error = errno;
	*connect_us = (now() - before) * 1e6;
	if (!error && send(fd, "x", 1, MSG_NOSIGNAL) != 1)
		error = errno;
	close(fd);
	return error;
}

int main(int argc, char **argv)
{
	static struct sockaddr_in to[MAX_ADDRESSES];
	size_t n_to = 0, count = 0, errors = 0, eaddrnotavail = 0, capacity;
	double seconds, rate, *samples;

	if (argc != 5 || (seconds = atof(argv[3])) <= 0 || (rate = atof(argv[4])) <= 0) {
		fprintf(stderr, "usage: churn IPV4-ADDRESS[,IPV4-ADDRESS...] PORT SECONDS RATE\n");
		return 2;
	}
	for (char *address = strtok(argv[1], ","); address && n_to < MAX_ADDRESSES; address = strtok(NULL, ",")) {
		to[n_to].sin_family = AF_INET;
		to[n_to].sin_port = htons((unsigned short)atoi(argv[2]));
		if (inet_pton(AF_INET, address, &to[n_to].sin_addr) != 1) {
			fprintf(stderr, "churn: not an IPv4 address: %s\n", address);
			return 2;
		}
		n_to++;
	}
	if (n_to == 0)
		return 2;
	capacity = (size_t)(seconds * rate) + 1;
	samples = malloc(capacity * sizeof(*samples));
	if (!samples)
		return 1;
	double start = now();

	for (; count < capacity; count++) {
		double due = start + count / rate;

		if (due >= start + seconds)
			break;
		sleep_until(due);
		int error = connection(&to[count % n_to], &samples[count]);

		if (error) {
			errors++;
			eaddrnotavail += error == EADDRNOTAVAIL;
		}
	}
	double elapsed = now() - start;

	qsort(samples, count, sizeof(*samples), by_value);
	printf("{\"connections\": %zu, \"errors\": %zu, \"eaddrnotavail\": %zu, \"seconds\": %.3f, \"rate\": %.1f, "
	       "\"connect_p50_us\": %.1f, \"connect_p99_us\": %.1f}\n", count, errors, eaddrnotavail, elapsed,
	       count / elapsed, count ? samples[count / 2] : 0.0, count ? samples[(size_t)(count * 0.99)] : 0.0);
	return 0;
}
