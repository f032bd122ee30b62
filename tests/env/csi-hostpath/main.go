// csi-hostpath is a hostpath CSI driver for kubestow's test cluster, and
// nothing else: every volume is a directory under -state, a snapshot is a
// full copy of one, and a volume made from a snapshot or another volume is a
// copy of that. It speaks CSI 1.x over gRPC to the real external-provisioner
// and csi-snapshotter sidecars and to the real kubelet, so provisioning,
// snapshots, restores from snapshots and mounts go through the same code
// paths as on any cluster.
//
// Why it exists: the Go module proxy reachable from the test machines
// refuses github.com/kubernetes-csi/csi-driver-host-path and
// github.com/kubernetes-csi/node-driver-registrar at every version (403
// "This module version is not available"). The upstream driver's data model
// is the same (a directory per volume, a copy per snapshot). The driver also
// serves the kubelet's plugin-registration socket, which is the one thing
// the node-driver-registrar does.
//
// It runs as a host process on the node, as root, because NodePublishVolume
// bind-mounts into the kubelet's pod directories.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

var (
	driverName   = flag.String("driver", "hostpath.csi.kubestow.test", "CSI driver name")
	endpoint     = flag.String("endpoint", "", "unix socket the sidecars and the kubelet dial")
	registration = flag.String("registration-dir", "", "the kubelet's plugins_registry directory; empty: no registration")
	stateDir     = flag.String("state", "", "directory holding volumes/ and snapshots/")
	nodeID       = flag.String("node", "", "node name reported to the kubelet")
	capacity     = flag.Int64("max-volume-bytes", 8<<30, "largest volume it accepts")
)

// meta is what the driver keeps about a volume or snapshot, next to its data.
type meta struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Bytes    int64  `json:"bytes"`
	Source   string `json:"source,omitempty"`
	Created  int64  `json:"created"`
	ReadyDir string `json:"-"`
}

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	// One lock for all: the test cluster makes few volumes, and a copy that
	// runs under it cannot race a delete of the same source.
	mu sync.Mutex
}

// idFor makes creation idempotent: the sidecars retry CreateVolume and
// CreateSnapshot with the same name until they see success.
func idFor(kind, name string) string {
	sum := sha256.Sum256([]byte(kind + "/" + name))
	return kind + "-" + hex.EncodeToString(sum[:8])
}

func dataDir(kind, id string) string { return filepath.Join(*stateDir, kind+"s", id) }

func readMeta(kind, id string) (*meta, error) {
	b, err := os.ReadFile(dataDir(kind, id) + ".json")
	if err != nil {
		return nil, err
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// writeMeta is the commit point: data is copied first, then the metadata is
// renamed into place, so a crash never leaves a half-copied snapshot that
// claims to be ready.
func writeMeta(kind string, m *meta) error {
	b, _ := json.Marshal(m)
	tmp := dataDir(kind, m.ID) + ".json.tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, dataDir(kind, m.ID)+".json")
}

// copyTree copies a directory's content with owners, modes, times and links.
func copyTree(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	out, err := exec.Command("cp", "-a", "--", src+"/.", dst+"/").CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp -a %s %s: %v: %s", src, dst, err, out)
	}
	return nil
}

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: *driverName, VendorVersion: "1"}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}},
	}}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

func controllerCap(t csi.ControllerServiceCapability_RPC_Type) *csi.ControllerServiceCapability {
	return &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}}
}

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{
		controllerCap(csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME),
		controllerCap(csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT),
		controllerCap(csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS),
		controllerCap(csi.ControllerServiceCapability_RPC_CLONE_VOLUME),
	}}, nil
}

func checkCaps(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume capabilities missing")
	}
	for _, c := range caps {
		if c.GetBlock() != nil {
			return status.Error(codes.InvalidArgument, "block volumes are not supported")
		}
	}
	return nil
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name missing")
	}
	if err := checkCaps(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	size := req.GetCapacityRange().GetRequiredBytes()
	if size == 0 {
		size = 1 << 30
	}
	if size > *capacity {
		return nil, status.Errorf(codes.OutOfRange, "%d bytes requested, at most %d", size, *capacity)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	id := idFor("volume", req.GetName())
	if m, err := readMeta("volume", id); err == nil {
		if m.Bytes < size {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s exists with %d bytes", req.GetName(), m.Bytes)
		}
		return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: id, CapacityBytes: m.Bytes, ContentSource: req.GetVolumeContentSource()}}, nil
	}
	dir := dataDir("volume", id)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	m := &meta{ID: id, Name: req.GetName(), Bytes: size, Created: time.Now().Unix()}
	if src := req.GetVolumeContentSource(); src != nil {
		var kind, srcID string
		switch {
		case src.GetSnapshot() != nil:
			kind, srcID = "snapshot", src.GetSnapshot().GetSnapshotId()
		case src.GetVolume() != nil:
			kind, srcID = "volume", src.GetVolume().GetVolumeId()
		default:
			return nil, status.Error(codes.InvalidArgument, "unknown content source")
		}
		if _, err := readMeta(kind, srcID); err != nil {
			return nil, status.Errorf(codes.NotFound, "%s %s: %v", kind, srcID, err)
		}
		if err := copyTree(dataDir(kind, srcID), dir); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		m.Source = kind + "/" + srcID
	}
	if err := writeMeta("volume", m); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	log.Printf("created volume %s (%s, %d bytes, source %q)", id, req.GetName(), size, m.Source)
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: id, CapacityBytes: size, ContentSource: req.GetVolumeContentSource()}}, nil
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" || strings.ContainsAny(id, "/.") {
		return nil, status.Error(codes.InvalidArgument, "bad volume id")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	_ = os.Remove(dataDir("volume", id) + ".json")
	if err := os.RemoveAll(dataDir("volume", id)); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	log.Printf("deleted volume %s", id)
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if _, err := readMeta("volume", req.GetVolumeId()); err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	if err := checkCaps(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{VolumeCapabilities: req.GetVolumeCapabilities()}}, nil
}

func snapshotOf(m *meta) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     m.ID,
		SourceVolumeId: strings.TrimPrefix(m.Source, "volume/"),
		SizeBytes:      m.Bytes,
		CreationTime:   timestamppb.New(time.Unix(m.Created, 0)),
		ReadyToUse:     true,
	}
}

func (d *driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" || req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "name and source volume are required")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	id := idFor("snapshot", req.GetName())
	if m, err := readMeta("snapshot", id); err == nil {
		if m.Source != "volume/"+req.GetSourceVolumeId() {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %s exists for another volume", req.GetName())
		}
		return &csi.CreateSnapshotResponse{Snapshot: snapshotOf(m)}, nil
	}
	vol, err := readMeta("volume", req.GetSourceVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s: %v", req.GetSourceVolumeId(), err)
	}
	dir := dataDir("snapshot", id)
	_ = os.RemoveAll(dir)
	if err := copyTree(dataDir("volume", vol.ID), dir); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	m := &meta{ID: id, Name: req.GetName(), Bytes: vol.Bytes, Source: "volume/" + vol.ID, Created: time.Now().Unix()}
	if err := writeMeta("snapshot", m); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	log.Printf("created snapshot %s of volume %s", id, vol.ID)
	return &csi.CreateSnapshotResponse{Snapshot: snapshotOf(m)}, nil
}

func (d *driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" || strings.ContainsAny(id, "/.") {
		return nil, status.Error(codes.InvalidArgument, "bad snapshot id")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	_ = os.Remove(dataDir("snapshot", id) + ".json")
	if err := os.RemoveAll(dataDir("snapshot", id)); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	log.Printf("deleted snapshot %s", id)
	return &csi.DeleteSnapshotResponse{}, nil
}

func (d *driver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	files, _ := filepath.Glob(filepath.Join(*stateDir, "snapshots", "*.json"))
	sort.Strings(files)
	var out []*csi.ListSnapshotsResponse_Entry
	for _, f := range files {
		m, err := readMeta("snapshot", strings.TrimSuffix(filepath.Base(f), ".json"))
		if err != nil {
			continue
		}
		if req.GetSnapshotId() != "" && m.ID != req.GetSnapshotId() {
			continue
		}
		if req.GetSourceVolumeId() != "" && m.Source != "volume/"+req.GetSourceVolumeId() {
			continue
		}
		out = append(out, &csi.ListSnapshotsResponse_Entry{Snapshot: snapshotOf(m)})
	}
	return &csi.ListSnapshotsResponse{Entries: out}, nil
}

func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: *nodeID}, nil
}

func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

func isMountPoint(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

func (d *driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if target == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "target path and capability are required")
	}
	if req.GetVolumeCapability().GetBlock() != nil {
		return nil, status.Error(codes.InvalidArgument, "block volumes are not supported")
	}
	if _, err := readMeta("volume", req.GetVolumeId()); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s: %v", req.GetVolumeId(), err)
	}
	if isMountPoint(target) {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := syscall.Mount(dataDir("volume", req.GetVolumeId()), target, "", syscall.MS_BIND, ""); err != nil {
		return nil, status.Errorf(codes.Internal, "bind mount %s: %v", target, err)
	}
	if req.GetReadonly() {
		// A bind mount takes the read-only flag only on a remount.
		if err := syscall.Mount("", target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
			_ = syscall.Unmount(target, 0)
			return nil, status.Errorf(codes.Internal, "read-only remount %s: %v", target, err)
		}
	}
	log.Printf("published volume %s at %s (read-only %v)", req.GetVolumeId(), target, req.GetReadonly())
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if target == "" {
		return nil, status.Error(codes.InvalidArgument, "target path is required")
	}
	if isMountPoint(target) {
		if err := syscall.Unmount(target, 0); err != nil {
			return nil, status.Errorf(codes.Internal, "unmount %s: %v", target, err)
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	log.Printf("unpublished %s", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// registrar answers the kubelet's plugin watcher, as node-driver-registrar does.
type registrar struct{ registerapi.UnimplementedRegistrationServer }

func (registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: *driverName, Endpoint: *endpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

func (registrar) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !s.PluginRegistered {
		log.Printf("kubelet refused the registration: %s", s.Error)
	} else {
		log.Printf("registered with the kubelet")
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

func listen(path string) net.Listener {
	_ = os.Remove(path)
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		log.Fatal(err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		log.Fatalf("listen %s: %v", path, err)
	}
	return l
}

func main() {
	flag.Parse()
	if *endpoint == "" || *stateDir == "" || *nodeID == "" {
		log.Fatal("-endpoint, -state and -node are required")
	}
	for _, kind := range []string{"volumes", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(*stateDir, kind), 0o755); err != nil {
			log.Fatal(err)
		}
	}
	d := &driver{}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterControllerServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	go func() { log.Fatal(srv.Serve(listen(*endpoint))) }()
	var reg *grpc.Server
	if *registration != "" {
		reg = grpc.NewServer()
		registerapi.RegisterRegistrationServer(reg, registrar{})
		sock := filepath.Join(*registration, *driverName+"-reg.sock")
		go func() { log.Fatal(reg.Serve(listen(sock))) }()
	}
	log.Printf("%s serving on %s (node %s, state %s)", *driverName, *endpoint, *nodeID, *stateDir)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	srv.GracefulStop()
	if reg != nil {
		reg.Stop()
	}
}
