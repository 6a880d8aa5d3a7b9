// Command gameserver stands in for the game servers Skyport's catalog runs
// (Minecraft, Terraria, ...), so that Berth's tests on a real kubelet see what a
// real one does, in a few MiB:
//
//   - prints a start-up banner, then a "Done" line once it listens;
//   - listens on TCP and UDP PRIMARY_PORT: a TCP client is answered one line, a
//     UDP datagram one datagram;
//   - reads commands from stdin: `stop` saves a file under /app/data and exits 0,
//     `say X` prints X, `crash` exits 1, anything else prints "Unknown command";
//   - honours SERVER_MEMORY (MiB) as its heap limit, and with HOG_MIB allocates
//     and touches that much memory (to exceed its limit on purpose);
//   - with IGNORE_STOP=1 ignores `stop` and SIGTERM (a hung server, which only a
//     kill ends);
//   - writes to /app/data when it starts, and reports the install file it finds.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const dataDir = "/app/data"

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func say(format string, args ...any) {
	fmt.Printf("[%s] [Server thread/INFO]: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// save writes the world: a file under the data folder saying when.
func save(why string) {
	say("Saving the game (%s)", why)
	stamp := time.Now().UTC().Format(time.RFC3339Nano) + " " + why + "\n"
	if err := os.WriteFile(filepath.Join(dataDir, "saved"), []byte(stamp), 0o644); err != nil {
		say("Could not save: %v", err)
		return
	}
	say("Saved the game")
}

func listen(port string) {
	tcp, err := net.Listen("tcp", ":"+port)
	if err != nil {
		say("FAILED TO BIND TO PORT %s: %v", port, err)
		os.Exit(1)
	}
	go func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "berth stand-in game server on port %s\n", port)
			c.Close()
		}
	}()
	udp, err := net.ListenPacket("udp", ":"+port)
	if err != nil {
		say("FAILED TO BIND TO UDP PORT %s: %v", port, err)
		os.Exit(1)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			udp.WriteTo([]byte("berth stand-in game server\n"), from)
		}
	}()
}

// held keeps what hog allocated reachable for the life of the process.
var held [][]byte

// hog allocates and touches `mib` MiB, so that the kernel counts every page.
func hog(mib int) {
	for i := 0; i < mib; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		held = append(held, b)
	}
}

func main() {
	started := time.Now()
	port := env("PRIMARY_PORT", "25565")
	memory, _ := strconv.Atoi(env("SERVER_MEMORY", "0"))
	say("Starting Berth stand-in game server version 1.0 on *:%s", port)
	if memory > 0 {
		debug.SetMemoryLimit(int64(memory) << 20)
		say("Heap limit %d MiB (SERVER_MEMORY)", memory)
	}
	if entries, err := os.ReadDir(dataDir); err == nil {
		for _, e := range entries {
			if info, err := e.Info(); err == nil && !e.IsDir() {
				say("Found %s (%d bytes)", e.Name(), info.Size())
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dataDir, "started"), []byte(started.UTC().Format(time.RFC3339Nano)+"\n"), 0o644); err != nil {
		say("Cannot write to %s: %v", dataDir, err)
	}
	if n, _ := strconv.Atoi(env("HOG_MIB", "0")); n > 0 {
		say("Allocating %d MiB", n)
		hog(n)
		say("Allocated %d MiB", len(held))
	}
	listen(port)
	say("Done (%.3fs)! For help, type \"help\"", time.Since(started).Seconds())

	ignoreStop := env("IGNORE_STOP", "") == "1"
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for s := range term {
			if ignoreStop {
				say("Ignoring %s", s)
				continue
			}
			save("signal " + s.String())
			os.Exit(0)
		}
	}()
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		cmd := strings.TrimSpace(lines.Text())
		switch {
		case cmd == "":
		case cmd == "stop" && ignoreStop:
			say("Ignoring stop")
		case cmd == "stop":
			say("Stopping the server")
			save("stop command")
			os.Exit(0)
		case cmd == "crash":
			say("Crashing on purpose")
			os.Exit(1)
		case strings.HasPrefix(cmd, "say "):
			say("[Server] %s", strings.TrimPrefix(cmd, "say "))
		case cmd == "help":
			say("Commands: stop, say <text>, crash, help")
		default:
			say("Unknown command. Type \"help\" for help.")
		}
	}
	// Stdin closed: a server keeps running without a console.
	select {}
}
