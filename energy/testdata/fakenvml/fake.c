// A fake libnvidia-ml.so.1 for the energy package's tests: the functions wattagg resolves, with
// NVML's contracts as documented in nvml.h (Init and Shutdown counted, calls outside them fail
// with NVML_ERROR_UNINITIALIZED, handles checked, names bounded by the caller's length).
//
// Environment, read by each nvmlInit_v2:
//   FAKENVML_INIT  a return code for nvmlInit_v2 to fail with (e.g. 9, driver not loaded)
//   FAKENVML_GPUS  "NAME=energy,NAME=power": the GPUs (at the first Init), with an energy
//                  counter or only a power reading; unset: one "Fake GPU" with a counter
//   FAKENVML_LOG   a file every call appends its name to
//
// Each GPU draws 150 W; its energy counter advances by 1000 mJ at every read.
// Built with -DWITHOUT_ENERGY it lacks nvmlDeviceGetTotalEnergyConsumption (drivers before
// Volta's), with -DWITHOUT_POWER nvmlDeviceGetPowerUsage.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;

enum {
	SUCCESS = 0,
	ERROR_UNINITIALIZED = 1,
	ERROR_INVALID_ARGUMENT = 2,
	ERROR_NOT_SUPPORTED = 3,
	ERROR_INSUFFICIENT_SIZE = 7,
};

struct gpu {
	char name[96];
	int has_energy;
	unsigned long long mj;
	unsigned int mw;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct gpu gpus[8];
static unsigned int ngpus;
static int inits;

static void logcall(const char *name) {
	const char *path = getenv("FAKENVML_LOG");
	if (!path) return;
	FILE *f = fopen(path, "a");
	if (f) {
		fprintf(f, "%s\n", name);
		fclose(f);
	}
}

static void configure(void) {
	const char *spec = getenv("FAKENVML_GPUS");
	ngpus = 0;
	if (!spec) spec = "Fake GPU=energy";
	char buf[1024];
	snprintf(buf, sizeof buf, "%s", spec);
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && ngpus < 8; tok = strtok_r(NULL, ",", &save)) {
		struct gpu *g = &gpus[ngpus++];
		char *eq = strchr(tok, '=');
		if (eq) *eq = 0;
		snprintf(g->name, sizeof g->name, "%s", tok);
		g->has_energy = !eq || strcmp(eq + 1, "power") != 0;
		g->mj = 5000000;
		g->mw = 150000;
	}
}

// gpu_of checks a handle: one this library gave out, while initialised.
static nvmlReturn_t gpu_of(void *d, struct gpu **g) {
	if (!inits) return ERROR_UNINITIALIZED;
	for (unsigned int i = 0; i < ngpus; i++) {
		if (d == &gpus[i]) {
			*g = &gpus[i];
			return SUCCESS;
		}
	}
	return ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t nvmlInit_v2(void) {
	logcall("nvmlInit_v2");
	const char *fail = getenv("FAKENVML_INIT");
	if (fail && atoi(fail) != 0) return atoi(fail);
	pthread_mutex_lock(&mu);
	if (inits++ == 0) configure();
	pthread_mutex_unlock(&mu);
	return SUCCESS;
}

nvmlReturn_t nvmlShutdown(void) {
	logcall("nvmlShutdown");
	pthread_mutex_lock(&mu);
	nvmlReturn_t r = inits ? (inits--, SUCCESS) : ERROR_UNINITIALIZED;
	pthread_mutex_unlock(&mu);
	return r;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) {
	logcall("nvmlDeviceGetCount_v2");
	pthread_mutex_lock(&mu);
	nvmlReturn_t r = !inits ? ERROR_UNINITIALIZED : !n ? ERROR_INVALID_ARGUMENT : SUCCESS;
	if (r == SUCCESS) *n = ngpus;
	pthread_mutex_unlock(&mu);
	return r;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **d) {
	logcall("nvmlDeviceGetHandleByIndex_v2");
	pthread_mutex_lock(&mu);
	nvmlReturn_t r = !inits ? ERROR_UNINITIALIZED : (i >= ngpus || !d) ? ERROR_INVALID_ARGUMENT : SUCCESS;
	if (r == SUCCESS) *d = &gpus[i];
	pthread_mutex_unlock(&mu);
	return r;
}

nvmlReturn_t nvmlDeviceGetName(void *d, char *name, unsigned int length) {
	logcall("nvmlDeviceGetName");
	struct gpu *g;
	pthread_mutex_lock(&mu);
	nvmlReturn_t r = gpu_of(d, &g);
	if (r == SUCCESS && (!name || strlen(g->name) + 1 > length)) r = ERROR_INSUFFICIENT_SIZE;
	if (r == SUCCESS) strcpy(name, g->name);
	pthread_mutex_unlock(&mu);
	return r;
}

#ifndef WITHOUT_POWER
nvmlReturn_t nvmlDeviceGetPowerUsage(void *d, unsigned int *mw) {
	logcall("nvmlDeviceGetPowerUsage");
	struct gpu *g;
	pthread_mutex_lock(&mu);
	nvmlReturn_t r = gpu_of(d, &g);
	if (r == SUCCESS && !mw) r = ERROR_INVALID_ARGUMENT;
	if (r == SUCCESS) *mw = g->mw;
	pthread_mutex_unlock(&mu);
	return r;
}
#endif

#ifndef WITHOUT_ENERGY
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(void *d, unsigned long long *mj) {
	logcall("nvmlDeviceGetTotalEnergyConsumption");
	struct gpu *g;
	pthread_mutex_lock(&mu);
	nvmlReturn_t r = gpu_of(d, &g);
	if (r == SUCCESS && !g->has_energy) r = ERROR_NOT_SUPPORTED;
	if (r == SUCCESS && !mj) r = ERROR_INVALID_ARGUMENT;
	if (r == SUCCESS) {
		g->mj += 1000;
		*mj = g->mj;
	}
	pthread_mutex_unlock(&mu);
	return r;
}
#endif

const char *nvmlErrorString(nvmlReturn_t r) {
	switch (r) {
	case 0: return "Success";
	case 1: return "Uninitialized";
	case 2: return "Invalid Argument";
	case 3: return "Not Supported";
	case 4: return "Insufficient Permissions";
	case 7: return "Insufficient Size";
	case 9: return "Driver Not Loaded";
	}
	return "Unknown Error";
}
