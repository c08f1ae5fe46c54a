/* One viewer's share of a frame, sent in C (issue 12): RTP headers, SRTP, sendmmsg.
 *
 * relay/live/rtp_sender.py's LeanSender calls send_frame() once per viewer and frame. What
 * Python did per packet there (pack a header, join it to the shared payload, pylibsrtp's
 * protect with its copies, asyncio's sendto) is done here for all of the frame's packets, and
 * the packets leave in one sendmmsg() call per BATCH. SRTP is libsrtp's own srtp_protect, the
 * very function and session aiortc's DTLS transport keyed (their addresses come from pylibsrtp's
 * cffi binding: relay/live/fanout.py), so no second copy of libsrtp and no key leaves aiortc.
 *
 * Runs with the GIL held, on the event loop's thread, like the Python it replaces: the static
 * buffers are never used by two calls at once, and the session is never touched concurrently.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>

#define SLOT 2048    /* bytes per packet buffer */
#define TRAILER 160  /* room left for what srtp_protect appends (tag, MKI) */
#define BATCH 64     /* packets per sendmmsg call */
#define HEADER 12

typedef int (*protect_t)(void *session, void *packet, int *length);

static unsigned char slots[BATCH][SLOT];
static struct iovec vectors[BATCH];
static struct mmsghdr messages[BATCH];

static int would_block(int error) {
    return error == EAGAIN || error == EWOULDBLOCK || error == ENOBUFS;
}

/* Appends packets [from, count) of the batch to `unsent` (a list, made when first needed). */
static int keep_unsent(PyObject **unsent, int from, int count) {
    if (*unsent == NULL && (*unsent = PyList_New(0)) == NULL)
        return -1;
    for (int i = from; i < count; i++) {
        PyObject *packet = PyBytes_FromStringAndSize((const char *)slots[i], (Py_ssize_t)vectors[i].iov_len);
        if (packet == NULL || PyList_Append(*unsent, packet) < 0) {
            Py_XDECREF(packet);
            return -1;
        }
        Py_DECREF(packet);
    }
    return 0;
}

PyDoc_STRVAR(send_frame_doc,
"send_frame(protect, session, fd, address, first, payload_type, sequence, timestamp, ssrc,\n"
"           extensions, payloads) -> (bytes_sent, unsent, failed)\n\n"
"Send `payloads` (a list of bytes: one frame's shared RTP payloads) as this viewer's SRTP\n"
"packets: sequence numbers from `sequence` on, the marker bit on the last one, `extensions`\n"
"(header-extension bytes, `first` the header's first byte) after every header. `protect` and\n"
"`session` are the addresses of libsrtp's srtp_protect and of the viewer's srtp_t; `fd` a UDP\n"
"socket, `address` a packed sockaddr (sockaddr()). Packets the socket would block on are\n"
"returned in `unsent`, protected and in order (the caller queues them); packets the kernel\n"
"refused for another reason are dropped and counted in `failed`, as asyncio's sendto does.");

static PyObject *send_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "send_frame takes 11 arguments");
        return NULL;
    }
    protect_t protect = (protect_t)PyLong_AsVoidPtr(args[0]);
    void *session = PyLong_AsVoidPtr(args[1]);
    int fd = (int)PyLong_AsLong(args[2]);
    long first = PyLong_AsLong(args[4]);
    long payload_type = PyLong_AsLong(args[5]);
    unsigned long sequence = PyLong_AsUnsignedLongMask(args[6]);
    unsigned long timestamp = PyLong_AsUnsignedLongMask(args[7]);
    unsigned long ssrc = PyLong_AsUnsignedLongMask(args[8]);
    if (PyErr_Occurred())
        return NULL;
    if (protect == NULL || session == NULL) {
        PyErr_SetString(PyExc_ValueError, "no SRTP function or session");
        return NULL;
    }
    if (!PyBytes_Check(args[3]) || !PyBytes_Check(args[9]) || !PyList_Check(args[10])) {
        PyErr_SetString(PyExc_TypeError, "address and extensions must be bytes, payloads a list");
        return NULL;
    }
    const char *address = PyBytes_AS_STRING(args[3]);
    socklen_t address_length = (socklen_t)PyBytes_GET_SIZE(args[3]);
    const char *extensions = PyBytes_AS_STRING(args[9]);
    Py_ssize_t extensions_length = PyBytes_GET_SIZE(args[9]);
    PyObject *payloads = args[10];
    Py_ssize_t total = PyList_GET_SIZE(payloads);

    PyObject *unsent = NULL;
    long long sent_bytes = 0;
    long failed = 0;
    for (Py_ssize_t start = 0; start < total; start += BATCH) {
        int count = (int)(total - start < BATCH ? total - start : BATCH);
        for (int i = 0; i < count; i++) {
            PyObject *payload = PyList_GET_ITEM(payloads, start + i);
            if (!PyBytes_Check(payload)) {
                PyErr_SetString(PyExc_TypeError, "every payload must be bytes");
                goto error;
            }
            Py_ssize_t size = PyBytes_GET_SIZE(payload);
            if (HEADER + extensions_length + size > SLOT - TRAILER) {
                PyErr_Format(PyExc_ValueError, "RTP packet of %zd bytes is too long",
                             HEADER + extensions_length + size);
                goto error;
            }
            unsigned char *packet = slots[i];
            unsigned long number = (sequence + (unsigned long)(start + i)) & 0xFFFF;
            packet[0] = (unsigned char)first;
            packet[1] = (unsigned char)(payload_type | (start + i == total - 1 ? 0x80 : 0));
            packet[2] = (unsigned char)(number >> 8);
            packet[3] = (unsigned char)number;
            packet[4] = (unsigned char)(timestamp >> 24);
            packet[5] = (unsigned char)(timestamp >> 16);
            packet[6] = (unsigned char)(timestamp >> 8);
            packet[7] = (unsigned char)timestamp;
            packet[8] = (unsigned char)(ssrc >> 24);
            packet[9] = (unsigned char)(ssrc >> 16);
            packet[10] = (unsigned char)(ssrc >> 8);
            packet[11] = (unsigned char)ssrc;
            memcpy(packet + HEADER, extensions, (size_t)extensions_length);
            memcpy(packet + HEADER + extensions_length, PyBytes_AS_STRING(payload), (size_t)size);
            int length = (int)(HEADER + extensions_length + size);
            int status = protect(session, packet, &length);
            if (status != 0) {
                PyErr_Format(PyExc_RuntimeError, "srtp_protect failed (libsrtp status %d)", status);
                goto error;
            }
            vectors[i].iov_base = packet;
            vectors[i].iov_len = (size_t)length;
            memset(&messages[i].msg_hdr, 0, sizeof(messages[i].msg_hdr));
            messages[i].msg_hdr.msg_name = (void *)address;
            messages[i].msg_hdr.msg_namelen = address_length;
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            sent_bytes += length;
        }
        int done = 0;
        while (done < count && unsent == NULL) {
            int result = sendmmsg(fd, messages + done, (unsigned int)(count - done), 0);
            if (result > 0) {
                done += result;
            } else if (errno == EINTR) {
                continue;
            } else if (would_block(errno)) {
                break;  /* this batch's rest and every later packet go to the caller's queue */
            } else {
                failed++;  /* (sendmmsg stops at the packet the kernel refused: skip it) */
                sent_bytes -= (long long)vectors[done].iov_len;
                done++;
            }
        }
        if (done < count && keep_unsent(&unsent, done, count) < 0)
            goto error;
    }
    if (unsent == NULL) {
        unsent = Py_None;
        Py_INCREF(unsent);
    }
    return Py_BuildValue("(LNl)", sent_bytes, unsent, failed);

error:
    Py_XDECREF(unsent);
    return NULL;
}

PyDoc_STRVAR(sockaddr_doc,
"sockaddr(host, port) -> bytes\n\n"
"The packed struct sockaddr of a numeric IPv4 or IPv6 address, for send_frame().");

static PyObject *sockaddr(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "sockaddr takes a host (str) and a port (int)");
        return NULL;
    }
    const char *host = PyUnicode_AsUTF8(args[0]);
    long port = PyLong_AsLong(args[1]);
    if (host == NULL || PyErr_Occurred())
        return NULL;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return NULL;
    }
    char service[8];
    snprintf(service, sizeof(service), "%ld", port);
    struct addrinfo hints = {0}, *found = NULL;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    hints.ai_socktype = SOCK_DGRAM;
    int status = getaddrinfo(host, service, &hints, &found);
    if (status != 0) {
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s", gai_strerror(status));
        return NULL;
    }
    PyObject *packed = PyBytes_FromStringAndSize((const char *)found->ai_addr, (Py_ssize_t)found->ai_addrlen);
    freeaddrinfo(found);
    return packed;
}

static PyMethodDef methods[] = {
    {"send_frame", (PyCFunction)(void (*)(void))send_frame, METH_FASTCALL, send_frame_doc},
    {"sockaddr", (PyCFunction)(void (*)(void))sockaddr, METH_FASTCALL, sockaddr_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relay.live._fanout",
    "One viewer's share of a frame, sent in C: RTP headers, SRTP, sendmmsg.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fanout(void) { return PyModule_Create(&module); }
